//! The net device's thread: serves the rx and tx queues and the tap, all in one epoll.
//!
//! Flow control, both ways without host-side buffering beyond one frame:
//! - rx: the tap is read only while the guest has rx buffers; when it has none (or too few
//!   for the frame in hand) the tap leaves the epoll interest set, and frames wait in the
//!   tap's own bounded queue until the guest's next rx notification.
//! - tx: a chain the tap cannot take yet (EAGAIN) goes back to the ring, tx stops, and the
//!   tap's writability resumes it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tracing::{debug, error};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::ring::{has_available, wants_interrupt};
use super::rx::{Delivery, Rx};
use super::tap::Tap;
use super::tx::{Tx, TxOutcome};
use crate::device::{GuestMemory, VirtioInterrupt};
use crate::guest_warn;
use crate::worker::DeviceWorker;

/// Queue indexes (virtio spec 5.1.2).
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Epoll token of the tap.
pub(super) const TOKEN_TAP: u64 = 0;
/// Frames (or chains) handled per wake-up before the other direction gets its turn.
const BUDGET: usize = 256;

pub(super) struct NetWorker {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub rx: Queue,
    pub tx: Queue,
    pub tap: Arc<Tap>,
    pub epoll: Arc<Epoll>,
    pub acked: u64,
    /// A second handle on the tx queue's notification eventfd, to resume tx after a budget.
    pub tx_kick: EventFd,
    pub rxp: Rx,
    pub txp: Tx,
    /// The guest has no (or too few) rx buffers: the tap is not read.
    pub rx_starved: bool,
    /// The tap refused a frame with EAGAIN: tx waits for EPOLLOUT.
    pub tx_blocked: bool,
    /// The tap's interest in the epoll; `None` once it was removed after an error.
    pub interest: Option<EventSet>,
}

impl NetWorker {
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        [rx, tx]: [Queue; 2],
        tap: Arc<Tap>,
        epoll: Arc<Epoll>,
        acked: u64,
        tx_kick: EventFd,
    ) -> io::Result<NetWorker> {
        epoll.ctl(
            ControlOperation::Add,
            tap.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TAP),
        )?;
        Ok(NetWorker {
            mem,
            interrupt,
            rx,
            tx,
            tap,
            epoll,
            acked,
            tx_kick,
            rxp: Rx::new(),
            txp: Tx::new(),
            rx_starved: false,
            tx_blocked: false,
            interest: Some(EventSet::IN),
        })
    }

    fn process_rx(&mut self) {
        let mut used = false;
        for _ in 0..BUDGET {
            if !self.rxp.has_pending() {
                if !has_available(&self.rx, &self.mem) {
                    self.rx_starved = true;
                    break;
                }
                match self.tap.read(self.rxp.buffer()) {
                    Ok(n) => self.rxp.set_pending(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        guest_warn!("virtio-net: reading tap {}: {e}", self.tap.name());
                        break;
                    }
                }
            }
            match self.rxp.deliver(&self.mem, &mut self.rx, self.acked) {
                Delivery::Delivered => used = true,
                Delivery::Dropped { used: u } => used |= u,
                Delivery::NoBuffers => {
                    self.rx_starved = true;
                    break;
                }
            }
        }
        if used && wants_interrupt(&self.rx, &self.mem) {
            self.interrupt.signal_used_queue();
        }
    }

    fn process_tx(&mut self) {
        if self.tx_blocked {
            return;
        }
        let mut used = false;
        let mut count = 0usize;
        'outer: loop {
            let _ = self.tx.disable_notification(&self.mem);
            let before = count;
            while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                match self.txp.send(&self.mem, chain, &self.tap, self.acked) {
                    TxOutcome::Blocked => {
                        self.tx.set_next_avail(self.tx.next_avail().wrapping_sub(1));
                        self.tx_blocked = true;
                        break 'outer;
                    }
                    TxOutcome::Sent | TxOutcome::Dropped => {
                        if let Err(e) = self.tx.add_used(&self.mem, head, 0) {
                            guest_warn!("virtio-net: cannot return tx chain {head}: {e}");
                        }
                        used = true;
                    }
                }
                count += 1;
                if count >= BUDGET {
                    // The rest after the other direction had its turn.
                    if let Err(e) = self.tx_kick.write(1) {
                        error!("virtio-net: cannot reschedule tx: {e}");
                    }
                    break 'outer;
                }
            }
            match self.tx.enable_notification(&self.mem) {
                // More chains, unless the ring cannot be read (an avail index past what the
                // queue holds pops nothing but always looks like more).
                Ok(true) if count > before => continue,
                Ok(true) => {
                    guest_warn!("virtio-net: tx avail ring unusable; waiting for a notify");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    guest_warn!("virtio-net: tx queue: {e}");
                    break;
                }
            }
        }
        if self.tx_blocked {
            let _ = self.tx.enable_notification(&self.mem);
        }
        if used && wants_interrupt(&self.tx, &self.mem) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Brings the tap's epoll interest in line with the state: IN unless rx is starved, OUT
    /// while tx is blocked.
    fn update_interest(&mut self) {
        let Some(current) = self.interest else { return };
        let mut want = EventSet::empty();
        if !self.rx_starved {
            want |= EventSet::IN;
        }
        if self.tx_blocked {
            want |= EventSet::OUT;
        }
        if want == current {
            return;
        }
        let ev = EpollEvent::new(want, TOKEN_TAP);
        match self.epoll.ctl(ControlOperation::Modify, self.tap.as_raw_fd(), ev) {
            Ok(()) => self.interest = Some(want),
            Err(e) => error!("virtio-net: epoll modify: {e}"),
        }
    }
}

impl DeviceWorker for NetWorker {
    fn queue_notified(&mut self, index: usize) {
        match index {
            RX_QUEUE => {
                self.rx_starved = false;
                self.process_rx();
            }
            TX_QUEUE => self.process_tx(),
            _ => debug!("virtio-net: notification for unknown queue {index}"),
        }
        self.update_interest();
    }

    fn fd_event(&mut self, token: u64, events: EventSet) {
        if token != TOKEN_TAP {
            return;
        }
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            error!("virtio-net: tap {} failed ({events:?}); the NIC stops", self.tap.name());
            let fd = self.tap.as_raw_fd();
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.interest = None;
            return;
        }
        if events.contains(EventSet::OUT) {
            self.tx_blocked = false;
            self.process_tx();
        }
        if events.contains(EventSet::IN) {
            self.process_rx();
        }
        self.update_interest();
    }
}
