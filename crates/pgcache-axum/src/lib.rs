//! Placeholder: implemented in its own issue.
