//! Device-tree reading (placeholder: being written).
