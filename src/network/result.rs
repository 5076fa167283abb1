//! Reading a CNI ADD result: which IP addresses the pod got (CNI SPEC.md,
//! "Section 5: Result Types"; 0.3.0 and later list `ips`, each optionally
//! naming an index into `interfaces`; 0.1/0.2 had `ip4`/`ip6`).
//!
//! kubelet takes the first IP as the pod IP and expects, on a dual-stack pod,
//! the second one to be of the other family: IPv4 comes first.

use std::net::IpAddr;

use serde_json::Value;

/// The pod's addresses from a result, IPv4 first, without duplicates. An
/// address that names an interface counts only when that interface is in
/// the pod's sandbox (the bridge plugin also reports host-side links).
pub fn pod_ips(result: &Value) -> Result<Vec<IpAddr>, String> {
    if !result.is_object() {
        return Err("result is not a JSON object".into());
    }
    let mut ips = Vec::new();
    if let Some(list) = result.get("ips") {
        let list = list.as_array().ok_or("\"ips\" is not an array")?;
        let interfaces = result.get("interfaces").and_then(|i| i.as_array());
        for entry in list {
            let address = entry
                .get("address")
                .and_then(|a| a.as_str())
                .ok_or("an \"ips\" entry has no \"address\"")?;
            if let Some(index) = entry.get("interface").and_then(|i| i.as_u64()) {
                let in_sandbox = interfaces
                    .and_then(|ifs| ifs.get(index as usize))
                    .and_then(|i| i.get("sandbox"))
                    .and_then(|s| s.as_str())
                    .is_some_and(|s| !s.is_empty());
                if !in_sandbox {
                    continue;
                }
            }
            ips.push(parse_cidr(address)?);
        }
    } else {
        // CNI 0.1.0/0.2.0 results.
        for key in ["ip4", "ip6"] {
            if let Some(ip) = result.get(key).and_then(|v| v.get("ip")) {
                let ip = ip.as_str().ok_or(format!("\"{key}.ip\" is not a string"))?;
                ips.push(parse_cidr(ip)?);
            }
        }
    }
    let mut unique: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !unique.contains(&ip) {
            unique.push(ip);
        }
    }
    // Stable: keeps the plugin's order within each family.
    unique.sort_by_key(|ip| ip.is_ipv6());
    Ok(unique)
}

/// `10.1.2.3/24` → 10.1.2.3.
fn parse_cidr(text: &str) -> Result<IpAddr, String> {
    let ip = text.split('/').next().unwrap_or_default();
    ip.parse()
        .map_err(|_| format!("invalid IP address {text:?} in result"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bridge_result_keeps_sandbox_addresses_ipv4_first() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                {"address": "10.9.0.1/24", "interface": 0},
                {"address": "10.1.0.6/24", "interface": 2}
            ]
        });
        let ips = pod_ips(&result).unwrap();
        let want: Vec<IpAddr> = vec![
            "10.1.0.5".parse().unwrap(),
            "10.1.0.6".parse().unwrap(),
            "fd00::5".parse().unwrap(),
        ];
        assert_eq!(ips, want);
    }

    #[test]
    fn addresses_without_interface_count() {
        let ips = pod_ips(&json!({"cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "192.168.1.2/24"}]}))
        .unwrap();
        assert_eq!(ips, vec!["192.168.1.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn old_results_with_ip4_and_ip6() {
        let ips = pod_ips(&json!({"cniVersion": "0.2.0",
            "ip6": {"ip": "fd00::2/64"}, "ip4": {"ip": "10.0.0.2/8"}}))
        .unwrap();
        assert_eq!(ips.len(), 2);
        assert!(ips[0].is_ipv4());
    }

    #[test]
    fn no_ips_and_bad_results() {
        assert!(pod_ips(&json!({"cniVersion": "1.0.0"})).unwrap().is_empty());
        assert!(pod_ips(&json!("x")).is_err());
        assert!(pod_ips(&json!({"ips": 1})).is_err());
        assert!(pod_ips(&json!({"ips": [{"gateway": "1.2.3.4"}]})).is_err());
        let e = pod_ips(&json!({"ips": [{"address": "nope/24"}]})).unwrap_err();
        assert!(e.contains("nope/24"), "{e}");
    }
}
