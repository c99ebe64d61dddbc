//! HTML helpers shared by the agent's status page and the metadata
//! server's web page.

/// Escape text for HTML element content and quoted attribute values
/// (`&`, `<`, `>`, `"` and `'`).
pub fn escape(s: &str) -> String {
    html_escape::encode_quoted_attribute(s).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup_and_both_quotes() {
        assert_eq!(
            super::escape(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(super::escape("plain/é"), "plain/é");
    }
}
