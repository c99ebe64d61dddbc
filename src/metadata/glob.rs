//! Atom path patterns: shell globs over `source/dataset/atom`, validation,
//! and their translation into index-friendly SQL conditions.
