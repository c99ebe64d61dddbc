//! Manager: backup and restore of sources.
