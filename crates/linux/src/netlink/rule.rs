//! Policy routing rules.
//!
//! Table ids above 255 travel in `FRA_TABLE`; the header byte then holds a placeholder
//! (`RT_TABLE_COMPAT`, 252) in dumps, so reading always prefers the attribute.

use std::fmt;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use super::{Family, Netlink, OWNER_PROTOCOL, Result, address_family, family_of};

/// A policy routing rule (`ip rule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    /// The table looked up (for [`RuleAction::ToTable`]).
    pub table: u32,
    pub action: RuleAction,
    pub fwmark: Option<u32>,
    /// The mask of `fwmark`; the kernel reports `0xffffffff` when none was given.
    pub fwmask: Option<u32>,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub protocol: RouteProtocol,
}

impl Rule {
    /// `fwmark MARK lookup TABLE priority PRIORITY proto 238`, as the kernel reports it back.
    pub fn fwmark_lookup(family: Family, mark: u32, table: u32, priority: u32) -> Rule {
        Rule {
            family,
            priority,
            table,
            action: RuleAction::ToTable,
            fwmark: Some(mark),
            fwmask: Some(u32::MAX),
            src: None,
            dst: None,
            iif: None,
            oif: None,
            protocol: RouteProtocol::from(OWNER_PROTOCOL),
        }
    }

    /// Whether we added this rule (its protocol is [`OWNER_PROTOCOL`]).
    pub fn is_owned(&self) -> bool {
        u8::from(self.protocol) == OWNER_PROTOCOL
    }

    fn from_message(message: &RuleMessage) -> Option<Rule> {
        let family = family_of(message.header.family)?;
        let mut rule = Rule {
            family,
            priority: 0,
            table: u32::from(message.header.table),
            action: message.header.action,
            fwmark: None,
            fwmask: None,
            src: None,
            dst: None,
            iif: None,
            oif: None,
            protocol: RouteProtocol::Unspec,
        };
        for attribute in &message.attributes {
            match attribute {
                RuleAttribute::Priority(priority) => rule.priority = *priority,
                RuleAttribute::Table(table) => rule.table = *table,
                RuleAttribute::FwMark(mark) => rule.fwmark = Some(*mark),
                RuleAttribute::FwMask(mask) => rule.fwmask = Some(*mask),
                RuleAttribute::Source(ip) => {
                    rule.src = IpNet::new(*ip, message.header.src_len).ok()
                }
                RuleAttribute::Destination(ip) => {
                    rule.dst = IpNet::new(*ip, message.header.dst_len).ok()
                }
                RuleAttribute::Iifname(name) => rule.iif = Some(name.clone()),
                RuleAttribute::Oifname(name) => rule.oif = Some(name.clone()),
                RuleAttribute::Protocol(protocol) => rule.protocol = *protocol,
                _ => {}
            }
        }
        Some(rule)
    }

    fn to_message(&self) -> RuleMessage {
        let mut message = RuleMessage::default();
        message.header.family = address_family(self.family);
        message.header.action = self.action;
        if self.table > 255 {
            // RT_TABLE_UNSPEC in the header; the kernel takes FRA_TABLE.
            message.header.table = 0;
        } else {
            message.header.table = self.table as u8;
        }
        message.attributes.push(RuleAttribute::Table(self.table));
        message
            .attributes
            .push(RuleAttribute::Priority(self.priority));
        if let Some(mark) = self.fwmark {
            message.attributes.push(RuleAttribute::FwMark(mark));
        }
        if let Some(mask) = self.fwmask {
            message.attributes.push(RuleAttribute::FwMask(mask));
        }
        if let Some(src) = self.src {
            message.header.src_len = src.prefix_len();
            message.attributes.push(RuleAttribute::Source(src.addr()));
        }
        if let Some(dst) = self.dst {
            message.header.dst_len = dst.prefix_len();
            message
                .attributes
                .push(RuleAttribute::Destination(dst.addr()));
        }
        if let Some(iif) = &self.iif {
            message.attributes.push(RuleAttribute::Iifname(iif.clone()));
        }
        if let Some(oif) = &self.oif {
            message.attributes.push(RuleAttribute::Oifname(oif.clone()));
        }
        if self.protocol != RouteProtocol::Unspec {
            message
                .attributes
                .push(RuleAttribute::Protocol(self.protocol));
        }
        message
    }
}

impl fmt::Display for Rule {
    /// Like `ip rule`: `priority 6000 fwmark 0xc350 lookup 1005` (IPv6 rules prefixed `-6`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.family == Family::V6 {
            write!(f, "-6 ")?;
        }
        write!(f, "priority {}", self.priority)?;
        if let Some(src) = self.src {
            write!(f, " from {src}")?;
        }
        if let Some(dst) = self.dst {
            write!(f, " to {dst}")?;
        }
        if let Some(mark) = self.fwmark {
            write!(f, " fwmark {mark:#x}")?;
            if let Some(mask) = self.fwmask.filter(|mask| *mask != u32::MAX) {
                write!(f, "/{mask:#x}")?;
            }
        }
        if let Some(iif) = &self.iif {
            write!(f, " iif {iif}")?;
        }
        if let Some(oif) = &self.oif {
            write!(f, " oif {oif}")?;
        }
        match self.action {
            RuleAction::ToTable => write!(f, " lookup {}", self.table),
            other => write!(f, " action {other:?}"),
        }
    }
}

impl Netlink {
    /// All IPv4 and IPv6 rules, in kernel order.
    pub async fn rules(&self) -> Result<Vec<Rule>> {
        let answer = self
            .dump(RouteNetlinkMessage::GetRule(RuleMessage::default()))
            .await
            .map_err(|f| f.during("listing rules"))?;
        Ok(answer
            .iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewRule(rule) => Rule::from_message(rule),
                _ => None,
            })
            .collect())
    }

    /// The IPv4 and IPv6 rules at `priority`.
    pub async fn rules_at(&self, priority: u32) -> Result<Vec<Rule>> {
        let mut rules = self.rules().await?;
        rules.retain(|rule| rule.priority == priority);
        Ok(rules)
    }

    /// Adds a rule; `File exists` if an identical one exists.
    pub async fn add_rule(&self, rule: &Rule) -> Result<()> {
        self.change(
            RouteNetlinkMessage::NewRule(rule.to_message()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        .map_err(|f| f.during(format!("adding rule {rule}")))
    }

    /// Deletes the rule matching every field of `rule`.
    pub async fn delete_rule(&self, rule: &Rule) -> Result<()> {
        self.change(RouteNetlinkMessage::DelRule(rule.to_message()), 0)
            .await
            .map_err(|f| f.during(format!("deleting rule {rule}")))
    }
}
