//! The NAT bed: an "internet" and home networks behind routers, in network namespaces that the
//! test creates and removes itself, with addresses of its own (198.18.0.0/24, the benchmarking
//! range, for the internet; 192.168.N.0/24 behind router N). Nothing leaves the machine: no
//! namespace has a route out of the bed.
//!
//! ```text
//!   inet ns: bridge br0 198.18.0.1 (the directory)
//!     ├─ public host      198.18.0.(100+n)                       kind Public
//!     ├─ firewalled host  198.18.0.(100+n), `ct state new drop`  kind Firewalled
//!     └─ router n: wan 198.18.0.(10+n) ── lan bridge 192.168.n.1 ── hosts 192.168.n.(10+k)
//!          Cone: masquerade (endpoint-independent mapping, port-restricted filtering)
//!          Hosts on one LAN reach each other (frames between bridge ports may be seen by the
//!          forward hook when the host kernel has br_netfilter loaded).
//!          Both kinds drop unsolicited packets to the router itself, as home routers do. (It
//!          matters for hole punching: a packet the router answered itself would leave a
//!          conntrack entry that makes masquerade pick another port for the host's reply.)
//!          Symmetric: masquerade fully-random (a new port per destination)
//! ```
//!
//! Every name starts with `qn{pid}x{bed}`; dropping the bed (also while a test panics) kills
//! what runs in its namespaces and deletes them, which removes their links and nft tables with
//! them. A bed left by a killed test process is removed by the next one.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The directory's address in the bed's internet.
pub const DIRECTORY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// How a host reaches the bed's internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// On the internet itself, no NAT, no firewall.
    Public,
    /// Behind a usual home router: masquerade.
    Cone,
    /// Behind a carrier-grade-like NAT: masquerade with a random port per connection.
    Symmetric,
    /// On the internet, but a stateful firewall drops unsolicited inbound packets.
    Firewalled,
}

/// One machine of the bed.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub kind: Kind,
    /// The router's internet address (a host without one is on the internet itself).
    pub router_ip: Option<Ipv4Addr>,
}

pub struct Bed {
    prefix: String,
    namespaces: Vec<String>,
    routers: usize,
    public_hosts: u8,
}

static BEDS: AtomicUsize = AtomicUsize::new(0);

impl Bed {
    /// Builds an empty internet. `None` (with the reason on standard error) where the bed cannot
    /// run: not root, or no `ip netns` or `nft` (`.ci/deps` installs them).
    pub fn create() -> Option<Bed> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the NAT bed needs root (network namespaces)");
            return None;
        }
        if Command::new("nft").arg("--version").output().is_err() {
            eprintln!("skipped: the NAT bed needs nft (run .ci/deps to install nftables)");
            return None;
        }
        remove_stale_beds();
        let prefix = format!("qn{}x{}", std::process::id(), BEDS.fetch_add(1, Ordering::Relaxed));
        let mut bed = Bed { prefix, namespaces: Vec::new(), routers: 0, public_hosts: 0 };
        let inet = bed.inet();
        if let Err(e) = bed.namespace(&inet) {
            eprintln!("skipped: cannot create a network namespace: {e}");
            return None;
        }
        bed.run(&inet, "ip link add br0 type bridge");
        bed.run(&inet, &format!("ip addr add {DIRECTORY_IP}/24 dev br0"));
        bed.run(&inet, "ip link set br0 up");
        Some(bed)
    }

    /// The internet's namespace (where the directory runs).
    pub fn inet(&self) -> String {
        format!("{}i", self.prefix)
    }

    /// Every namespace of the bed, for tests of its teardown.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Adds a host of `kind`: on the internet, or behind a router of its own.
    pub fn host(&mut self, kind: Kind) -> Host {
        match kind {
            Kind::Public | Kind::Firewalled => self.public_host(kind),
            Kind::Cone | Kind::Symmetric => {
                let router = self.router(kind);
                self.behind(&router)
            }
        }
    }

    /// A router of `kind` (`Cone` or `Symmetric`) with nobody behind it yet.
    pub fn router(&mut self, kind: Kind) -> Router {
        self.routers += 1;
        let n = self.routers;
        let ns = format!("{}r{n}", self.prefix);
        let wan = Ipv4Addr::new(198, 18, 0, 10 + n as u8);
        self.namespace(&ns).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
        self.run(&self.inet(), &format!("ip link add r{n} type veth peer name wan netns {ns}"));
        self.run(&self.inet(), &format!("ip link set r{n} master br0 up"));
        self.run(&ns, &format!("ip addr add {wan}/24 dev wan"));
        self.run(&ns, "ip link set wan up");
        self.run(&ns, "ip link add lan type bridge");
        self.run(&ns, &format!("ip addr add 192.168.{n}.1/24 dev lan"));
        self.run(&ns, "ip link set lan up");
        self.run(&ns, "sysctl -qw net.ipv4.ip_forward=1");
        let random = if kind == Kind::Symmetric { " fully-random" } else { "" };
        let rules = format!(
            "table ip bed {{\n\
               chain post {{ type nat hook postrouting priority srcnat; oifname \"wan\" masquerade{random}; }}\n\
               chain through {{ type filter hook forward priority filter; policy drop;\n\
                 ct state established,related accept; iifname \"lan\" oifname {{ \"lan\", \"wan\" }} accept; }}\n\
               chain in {{ type filter hook input priority filter; policy accept;\n\
                 iifname \"wan\" ct state new drop; }}\n\
             }}\n"
        );
        self.nft(&ns, &rules);
        Router { ns, n, wan, kind }
    }

    /// A new host on `router`'s LAN.
    pub fn behind(&mut self, router: &Router) -> Host {
        let k = self
            .namespaces
            .iter()
            .filter(|n| n.starts_with(&format!("{}h{}.", self.prefix, router.n)))
            .count();
        let ns = format!("{}h{}.{k}", self.prefix, router.n);
        let ip = Ipv4Addr::new(192, 168, router.n as u8, 10 + k as u8);
        self.namespace(&ns).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
        self.run(&router.ns, &format!("ip link add h{k} type veth peer name eth0 netns {ns}"));
        self.run(&router.ns, &format!("ip link set h{k} master lan up"));
        self.run(&ns, &format!("ip addr add {ip}/24 dev eth0"));
        self.run(&ns, "ip link set eth0 up");
        self.run(&ns, &format!("ip route add default via 192.168.{}.1", router.n));
        Host { ns, ip, kind: router.kind, router_ip: Some(router.wan) }
    }

    fn public_host(&mut self, kind: Kind) -> Host {
        self.public_hosts += 1;
        let n = self.public_hosts;
        let ns = format!("{}p{n}", self.prefix);
        let ip = Ipv4Addr::new(198, 18, 0, 100 + n);
        self.namespace(&ns).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
        self.run(&self.inet(), &format!("ip link add p{n} type veth peer name eth0 netns {ns}"));
        self.run(&self.inet(), &format!("ip link set p{n} master br0 up"));
        self.run(&ns, &format!("ip addr add {ip}/24 dev eth0"));
        self.run(&ns, "ip link set eth0 up");
        if kind == Kind::Firewalled {
            self.nft(
                &ns,
                "table inet bed {\n\
                   chain in { type filter hook input priority filter; policy accept;\n\
                     iifname \"lo\" accept; ct state established,related accept; ct state new drop; }\n\
                 }\n",
            );
        }
        Host { ns, ip, kind, router_ip: None }
    }

    fn namespace(&mut self, ns: &str) -> Result<(), String> {
        sh(&format!("ip netns add {ns}"))?;
        self.namespaces.push(ns.to_owned());
        sh(&format!("ip netns exec {ns} ip link set lo up"))
    }

    fn run(&self, ns: &str, command: &str) {
        sh(&format!("ip netns exec {ns} {command}")).unwrap_or_else(|e| panic!("{e}"));
    }

    fn nft(&self, ns: &str, rules: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
        child.stdin.take().map(|mut s| s.write_all(rules.as_bytes()));
        let status = child.wait().unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
        assert!(status.success(), "nft in {ns} refused:\n{rules}");
    }
}

/// A router of the bed.
pub struct Router {
    pub ns: String,
    n: usize,
    pub wan: Ipv4Addr,
    kind: Kind,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// Kills whatever runs in `ns` and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    if let Err(e) = sh(&format!("ip netns del {ns}")) {
        eprintln!("NAT bed teardown: {e}");
    }
}

/// Removes the namespaces of beds whose test process is gone (killed before its drop ran).
fn remove_stale_beds() {
    for ns in bed_namespaces() {
        let pid = ns.trim_start_matches("qn").split('x').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            remove_namespace(&ns);
        }
    }
}

/// Every namespace on the machine that a bed made (`qn<pid>x...`).
pub fn bed_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("qn") && n[2..].split('x').next().is_some_and(|p| p.parse::<u32>().is_ok()))
        .map(str::to_owned)
        .collect()
}

/// Runs a command line (no shell: split on spaces), failing with its output.
fn sh(line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let program = words.next().ok_or("empty command")?;
    let out = Command::new(program).args(words).output().map_err(|e| format!("{line}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{line}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A directory server on a thread of its own inside a namespace (sockets belong to the
/// namespace of the thread that makes them, and threads a thread starts inherit it), with its
/// data in a temporary directory. Stopped gracefully on drop.
pub struct NsDirectory {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl NsDirectory {
    pub fn start(ns: &str) -> NsDirectory {
        Self::start_with_relay(ns, None)
    }

    /// A directory that hands out `relay` (the bed's TURN server) to pairs that cannot punch.
    pub fn start_with_relay(ns: &str, relay: Option<&TurnServer>) -> NsDirectory {
        use std::os::fd::AsRawFd;
        let data = tempfile::tempdir().unwrap();
        let config = quaver_directory::Config {
            listen: std::net::SocketAddr::from((DIRECTORY_IP, 0)),
            data_dir: data.path().to_owned(),
            index_commit_ms: 20,
            relay_address: relay.map(|r| r.address.clone()),
            relay_secret: relay.map(|r| r.secret.clone()),
            ..quaver_directory::Config::default()
        };
        let netns = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let server = quaver_directory::RunningServer::start(config).await.unwrap();
                url_tx.send(format!("http://{}", server.local_addr)).unwrap();
                let _ = stopped.await;
                let _ = server.shutdown().await;
            });
        });
        let url =
            url_rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the directory did not start");
        NsDirectory { url, stop: Some(stop), thread: Some(thread), _data: data }
    }
}

impl Drop for NsDirectory {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// coturn (`turnserver`, Debian) on the bed's internet, at the directory's address: the relay,
/// with the TURN REST API secret the directory mints credentials from and a bandwidth cap per
/// allocation. Killed on drop (the namespace's teardown would kill it too).
pub struct TurnServer {
    pub address: String,
    pub secret: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

/// The TURN server's UDP port in the bed.
pub const TURN_PORT: u16 = 3478;

impl TurnServer {
    /// `None` (saying why) where coturn is not installed.
    pub fn start(inet: &str, max_bytes_per_second: u64) -> Option<TurnServer> {
        if Command::new("turnserver").arg("--version").output().is_err() {
            eprintln!("skipped: no turnserver (coturn; .ci/deps installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = "bed-relay-secret-0123456789".to_owned();
        let conf = dir.path().join("turnserver.conf");
        std::fs::write(
            &conf,
            format!(
                "listening-ip={DIRECTORY_IP}\nrelay-ip={DIRECTORY_IP}\nlistening-port={TURN_PORT}\n\
                 min-port=49152\nmax-port=49252\nuse-auth-secret\nstatic-auth-secret={secret}\n\
                 realm=quaver.test\nfingerprint\nno-tcp\nno-tls\nno-dtls\nno-tcp-relay\nno-cli\n\
                 no-stdout-log\nsimple-log\nlog-file={}\npidfile={}\nmax-bps={max_bytes_per_second}\n\
                 allowed-peer-ip=198.18.0.0-198.18.0.255\n",
                dir.path().join("turn.log").display(),
                dir.path().join("turn.pid").display(),
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", inet, "turnserver", "-c"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = TurnServer { address: format!("{DIRECTORY_IP}:{TURN_PORT}"), secret, child, _dir: dir };
        // Listening once its UDP socket is bound in the namespace.
        for _ in 0..100 {
            let out = Command::new("ip").args(["netns", "exec", inet, "ss", "-Hlun"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&format!("{DIRECTORY_IP}:{TURN_PORT}")) {
                return Some(server);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("turnserver did not start; its log: {}", server.log());
    }

    /// coturn's process id (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What coturn logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("turn.log")).unwrap_or_default()
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
