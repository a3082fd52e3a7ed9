//! The Linux data plane: turns a node plan into kernel state (nftables, addresses, rules, routes,
//! a VXLAN device, neighbours) in the current network namespace, reads back what exists, and
//! applies only the difference. It owns only what it tagged; see the docs of each module.

pub mod applier;
pub mod desired;
mod libnftables;
pub mod netlink;
pub mod netns;
pub mod nft;
