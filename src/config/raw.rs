//! Serde mirror of the YAML files as the user wrote them (unknown keys are
//! errors). Validated into the types of [`crate::config`] by
//! [`crate::config::load`].
