//! The virtio-net device: features, config space (the MAC), activation.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tracing::{debug, info, warn};
use vmm_sys_util::epoll::Epoll;

use super::header::{offered_features, tun_offloads};
use super::mac::MacAddr;
use super::tap::{Tap, TapError};
use super::worker::NetWorker;
use crate::device::{ActivateError, DeviceQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::guest_warn;
use crate::worker::DeviceThread;

/// Virtio device ID of the network card.
pub const VIRTIO_ID_NET: u32 = 1;
const QUEUE_SIZE: u16 = 256;

/// A virtio-net NIC backed by a tap. Once activated, both queues and the tap are served on
/// the device's own thread.
pub struct Net {
    tap: Arc<Tap>,
    mac: MacAddr,
    features: u64,
    sizes: [u16; 2],
    active: Option<DeviceThread<NetWorker>>,
}

impl Net {
    /// A NIC with address `mac` on the tap `tap` (opened with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR). The guest is offered the offloads the tap accepts.
    pub fn new(tap: OwnedFd, mac: MacAddr) -> Result<Net, TapError> {
        let tap = Tap::new(tap)?;
        let features = offered_features(tap.probe_offloads());
        info!("virtio-net: tap {}, mac {mac}, features {features:#x}", tap.name());
        Ok(Net { tap: Arc::new(tap), mac, features, sizes: [QUEUE_SIZE; 2], active: None })
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Runs `f` on the device thread once every notification sent so far is handled.
    #[cfg(test)]
    pub(super) fn with_worker<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NetWorker) -> R + Send + 'static,
    ) -> Option<R> {
        self.active.as_ref().map(|t| t.with(f))
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], then fields of features not offered (zero).
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.mac.0.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        guest_warn!("virtio-net: guest wrote read-only config at {offset:#x}; ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx]: [DeviceQueue; 2] =
            queues.try_into().map_err(|_| ActivateError::QueueCount { want: 2, got })?;
        // A second activation without reset replaces the first.
        self.active = None;
        let backend = |e: Box<dyn std::error::Error + Send + Sync>| ActivateError::Backend(e);
        self.tap.set_offload(tun_offloads(acked_features)).map_err(|e| backend(e.into()))?;
        let epoll = Arc::new(Epoll::new().map_err(|e| backend(e.into()))?);
        let tx_kick = tx.notify.try_clone().map_err(|e| backend(e.into()))?;
        let worker = NetWorker::new(
            mem,
            interrupt,
            [rx.queue, tx.queue],
            self.tap.clone(),
            epoll.clone(),
            acked_features,
            tx_kick,
        )
        .map_err(|e| backend(e.into()))?;
        let thread = DeviceThread::spawn("virtio-net", epoll, worker, vec![rx.notify, tx.notify])
            .map_err(|e| backend(e.into()))?;
        self.active = Some(thread);
        debug!("virtio-net: activated with features {acked_features:#x}");
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        if let Err(e) = self.tap.set_offload(0) {
            warn!("virtio-net: {e}");
        }
    }
}
