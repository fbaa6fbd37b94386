//! LPAE long-descriptor translation tables (placeholder: being written).
