//! The memory plan (placeholder: being written).
