//! The CNI plugins' own time: every plugin of a conflist run directly (CNI
//! spec 1.0 ADD with prevResult chaining, DEL in reverse order), in a
//! network namespace pinned by `unshare --net=FILE`, the same calls a
//! runtime makes for one pod; and, timed apart, the loopback plugin, which
//! containerd (go-cni) runs for every pod and crius does not (its pod
//! monitor brings lo up itself).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::stats::Results;

pub struct Cni {
    pub conflist: PathBuf,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
}

impl Cni {
    fn call(
        &self,
        plugin: &Value,
        cmd: &str,
        id: &str,
        netns: &Path,
        ifname: &str,
    ) -> anyhow::Result<Value> {
        let ty = plugin["type"].as_str().context("plugin without type")?;
        let mut child = Command::new(self.bin_dir.join(ty))
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.bin_dir)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={id}"),
            )
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run CNI plugin {ty}"))?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(&serde_json::to_vec(plugin)?)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "CNI {cmd} {ty}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// ADD then DEL of loopback + the conflist, `n` times, each pair in a
    /// fresh namespace; records "CNI plugins ADD (conflist)", "CNI plugins
    /// DEL (conflist)" and the loopback plugin's ADD and DEL apart.
    /// Then `par` pairs at once (one thread each), `rounds` times: the
    /// plugins' own time under the benchmark's parallel load (host-local
    /// and iptables serialise on their locks).
    pub fn measure(
        &self,
        n: usize,
        par: usize,
        rounds: usize,
        r: &mut Results,
    ) -> anyhow::Result<()> {
        let list: Value = serde_json::from_slice(
            &std::fs::read(&self.conflist)
                .with_context(|| format!("read {}", self.conflist.display()))?,
        )?;
        for i in 0..n {
            self.pair(&list, &format!("{i}"), "", r)?;
        }
        if par == 0 {
            return Ok(());
        }
        let tag = format!("{par}-way parallel: ");
        let results: Vec<anyhow::Result<Results>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..par)
                .map(|w| {
                    let (list, tag) = (&list, &tag);
                    s.spawn(move || {
                        let mut r = Results::default();
                        for round in 0..rounds {
                            self.pair(list, &format!("p{w}-{round}"), tag, &mut r)?;
                        }
                        Ok(r)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
                })
                .collect()
        });
        for res in results {
            r.merge(res?);
        }
        Ok(())
    }

    /// One ADD/DEL pair in a fresh namespace named by `name`.
    fn pair(&self, list: &Value, name: &str, tag: &str, r: &mut Results) -> anyhow::Result<()> {
        let version = list["cniVersion"].clone();
        let net = list["name"].clone();
        let lo = json!({"cniVersion": version, "name": "cni-loopback", "type": "loopback"});
        let plugins: Vec<Value> = list["plugins"]
            .as_array()
            .context("conflist without plugins")?
            .clone();
        let netns = self.work.join(format!("netns-{name}"));
        std::fs::write(&netns, b"")?;
        let st = Command::new("unshare")
            .arg(format!("--net={}", netns.display()))
            .arg("true")
            .status()?;
        anyhow::ensure!(st.success(), "unshare --net={}", netns.display());
        let id = format!("cni-bench-{}-{name}", std::process::id());
        let result = (|| -> anyhow::Result<()> {
            let t = Instant::now();
            self.call(&lo, "ADD", &id, &netns, "lo")?;
            r.time(&format!("{tag}CNI loopback plugin ADD"), t.elapsed());
            let t = Instant::now();
            let mut prev = Value::Null;
            for p in &plugins {
                let mut conf = p.clone();
                conf["cniVersion"] = version.clone();
                conf["name"] = net.clone();
                if !prev.is_null() {
                    conf["prevResult"] = prev.clone();
                }
                prev = self.call(&conf, "ADD", &id, &netns, "eth0")?;
            }
            r.time(&format!("{tag}CNI plugins ADD (conflist)"), t.elapsed());
            let t = Instant::now();
            for p in plugins.iter().rev() {
                let mut conf = p.clone();
                conf["cniVersion"] = version.clone();
                conf["name"] = net.clone();
                conf["prevResult"] = prev.clone();
                self.call(&conf, "DEL", &id, &netns, "eth0")?;
            }
            r.time(&format!("{tag}CNI plugins DEL (conflist)"), t.elapsed());
            let t = Instant::now();
            self.call(&lo, "DEL", &id, &netns, "lo")?;
            r.time(&format!("{tag}CNI loopback plugin DEL"), t.elapsed());
            Ok(())
        })();
        let _ = Command::new("umount").arg(&netns).status();
        let _ = std::fs::remove_file(&netns);
        result
    }
}
