//! Legacy devices and the buses that route vCPU exits to devices.

pub mod i8042;
pub mod mmio_bus;
pub mod pio_bus;
pub mod serial;
pub mod virtio;
