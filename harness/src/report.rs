//! Table helpers.
