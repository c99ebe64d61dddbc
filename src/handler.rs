//! Handlers: how a class of datasets is backed up and restored.
