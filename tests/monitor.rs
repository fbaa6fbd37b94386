//! The monitor under QEMU (being written).
