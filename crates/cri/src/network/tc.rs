//! tc over rtnetlink: an ingress qdisc on a link and a match-all u32 filter
//! whose mirred action redirects every frame to another link's egress (what
//! Kata's tcfilter networking sets up; `tc qdisc add dev A ingress` and
//! `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action
//! mirred egress redirect dev B`).

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use carapace_netlink::Netlink;

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle { major: 0xffff, minor: 0 };

/// ETH_P_ALL.
const ETH_P_ALL: u16 = 0x0003;

/// The filter's priority.
const PRIO: u32 = 1;

fn ifindex_i32(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex out of range"))
}

/// `tc qdisc add dev <ifindex> handle ffff: ingress`.
pub fn add_ingress_qdisc(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    let mut m = TcMessage::default();
    m.header.index = ifindex_i32(ifindex)?;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m.attributes.push(TcAttribute::Options(vec![]));
    nl.request(RouteNetlinkMessage::NewQueueDiscipline(m), NLM_F_CREATE | NLM_F_EXCL)
}

/// [`add_ingress_qdisc`], first removing one that is there already (with
/// its filters: a tap that went away left them redirecting to nothing).
pub fn replace_ingress_qdisc(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    match add_ingress_qdisc(nl, ifindex) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            del_ingress_qdisc(nl, ifindex)?;
            add_ingress_qdisc(nl, ifindex)
        }
        r => r,
    }
}

/// `tc qdisc del dev <ifindex> ingress` (its filters go with it).
pub fn del_ingress_qdisc(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    let mut m = TcMessage::default();
    m.header.index = ifindex_i32(ifindex)?;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    nl.request(RouteNetlinkMessage::DelQueueDiscipline(m), 0)
}

/// Every frame arriving on `from` leaves through `to`: a u32 filter under
/// `from`'s ingress qdisc with one key matching anything and a mirred
/// egress-redirect action.
pub fn redirect_all(nl: &mut Netlink, from: u32, to: u32) -> io::Result<()> {
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirred = TcMirror::default();
    mirred.generic = generic;
    mirred.eaction = TcMirrorActionType::EgressRedir;
    mirred.ifindex = to;
    let mut action = TcAction::default();
    action.attributes.push(TcActionAttribute::Kind("mirred".into()));
    action.attributes.push(TcActionAttribute::Options(vec![TcActionOption::Mirror(
        TcActionMirrorOption::Parms(mirred),
    )]));

    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.keys.push(TcU32Key::default()); // mask 0, value 0, offset 0: matches all
    sel.nkeys = 1;

    let mut m = TcMessage::default();
    m.header.index = ifindex_i32(from)?;
    m.header.parent = INGRESS_HANDLE;
    m.header.info = (PRIO << 16) | u32::from(ETH_P_ALL.to_be());
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    nl.request(RouteNetlinkMessage::NewTrafficFilter(m), NLM_F_CREATE | NLM_F_EXCL)
}

/// The kinds of the filters under `ifindex`'s ingress qdisc (for tests).
pub fn ingress_filter_kinds(nl: &mut Netlink, ifindex: u32) -> io::Result<Vec<String>> {
    let mut q = TcMessage::default();
    q.header.index = ifindex_i32(ifindex)?;
    q.header.parent = INGRESS_HANDLE;
    let msgs = nl.dump(RouteNetlinkMessage::GetTrafficFilter(q))?;
    let mut out = Vec::new();
    for m in msgs {
        if let RouteNetlinkMessage::NewTrafficFilter(f) = m {
            for a in f.attributes {
                if let TcAttribute::Kind(k) = a {
                    out.push(k);
                }
            }
        }
    }
    Ok(out)
}
