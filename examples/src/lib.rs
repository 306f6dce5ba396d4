//! Example support code (placeholder).
