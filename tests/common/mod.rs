//! A small iSCSI initiator for integration tests, built on keel's own wire codec, and a
//! helper that runs keel in-process on an ephemeral port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use keel::config;
use keel::server::Server;
use keel::wire::framing::{BufQueue, frame_parts};
use keel::wire::{
    DataOut, FrameLimits, LoginRequest, LogoutRequest, NopOut, PduCodec, RESERVED_TAG, Reply,
    Request, ScsiCommand, TextRequest, text,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

pub const TARGET: &str = "iqn.2026-11.org.example:disk0";
pub const INITIATOR: &str = "iqn.2026-11.org.example:test-initiator";

/// keel running in this process on 127.0.0.1 with an ephemeral port.
pub struct Keel {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Keel {
    /// One target with one file LUN of `size` bytes; `server_extra` adds lines to [server].
    pub async fn start(size: &str, server_extra: &str) -> Keel {
        Keel::start_with(size, server_extra, "").await
    }

    /// Like [`Keel::start`]; `target_extra` adds lines (keys, `[[target.chap]]` tables) to
    /// the target before its LUN.
    pub async fn start_with(size: &str, server_extra: &str, target_extra: &str) -> Keel {
        Keel::start_with_in(
            tempfile::tempdir().unwrap(),
            size,
            server_extra,
            target_extra,
        )
        .await
    }

    /// Like [`Keel::start`] with the data directory, and so the LUN's file, on tmpfs
    /// (/dev/shm): the medium whose read data keel sends from the file (sendfile).
    pub async fn start_on_tmpfs(size: &str, server_extra: &str) -> Keel {
        let dir = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) is writable");
        Keel::start_with_in(dir, size, server_extra, "").await
    }

    async fn start_with_in(
        dir: tempfile::TempDir,
        size: &str,
        server_extra: &str,
        target_extra: &str,
    ) -> Keel {
        let text = format!(
            "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{0}\"\ncontrol_socket = \"{0}/keel.sock\"\n{server_extra}\n\
             [[target]]\nname = \"{TARGET}\"\nalias = \"disk0\"\n{target_extra}\n\
             [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"{size}\"\n",
            dir.path().display()
        );
        Keel::serve(dir, &text).await
    }

    /// keel in an existing data directory (a restart): one target with one file LUN
    /// `disk0.img` of `size` (created if missing); `lun_extra` adds keys to the LUN.
    pub async fn start_in(dir: tempfile::TempDir, size: &str, lun_extra: &str) -> Keel {
        let text = format!(
            "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{0}\"\ncontrol_socket = \"{0}/keel.sock\"\n\
             [[target]]\nname = \"{TARGET}\"\n\
             [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"{size}\"\n{lun_extra}\n",
            dir.path().display()
        );
        Keel::serve(dir, &text).await
    }

    /// keel in this process on the configuration `text`, with `dir` as its data directory.
    async fn serve(dir: tempfile::TempDir, text: &str) -> Keel {
        let config = config::parse(text, "test").unwrap();
        let server = Server::bind(&config).await.unwrap();
        let addr = server.local_addrs()[0];
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Keel {
            addr,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts keel down the way SIGTERM does and waits for it to finish; hands back its
    /// data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        self.dir
    }

    /// Whether the server task is still running (it must never exit on bad input).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// keel's own binary (the one cargo builds for these tests) running as a child process, so that its descriptors
/// and memory can be measured apart from the test harness (whose other tests run in the same
/// process as an in-process [`Keel`]).
pub struct KeelProcess {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

/// Open descriptors and resident memory of a process, from /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub fds: usize,
    pub rss_kib: u64,
}

impl Usage {
    /// Reads /proc/PID/fd and VmRSS from /proc/PID/status; `None` if the process is gone.
    pub fn of(pid: u32) -> Option<Usage> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        Some(Usage { fds, rss_kib })
    }
}

impl KeelProcess {
    /// Starts `keel serve` on 127.0.0.1 (an ephemeral port) with one file LUN of `size`;
    /// `server_extra` adds lines to [server]. Waits (bounded) for its "listening" line.
    pub async fn start(size: &str, server_extra: &str) -> KeelProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("targets.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{0}\"\ncontrol_socket = \"{0}/keel.sock\"\n{server_extra}\n\
                 [[target]]\nname = \"{TARGET}\"\n\
                 [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"{size}\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let log_path = dir.path().join("keel.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("KEEL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut keel = KeelProcess {
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            child,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let portal = text
                .lines()
                .filter(|l| l.contains("listening"))
                .find_map(|l| l.split("portal=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            if let Some(addr) = portal {
                keel.addr = addr;
                return keel;
            }
            assert!(
                keel.child.try_wait().unwrap().is_none(),
                "keel exited at start: {text}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "keel did not start: {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn usage(&mut self) -> Usage {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "keel exited: {}",
            self.log()
        );
        Usage::of(self.pid()).expect("keel's /proc entry")
    }

    /// Polls (every 50 ms, at most `within`) until `settled` holds for keel's usage; returns
    /// the last reading either way.
    pub async fn settle(&mut self, within: Duration, settled: impl Fn(Usage) -> bool) -> Usage {
        let deadline = std::time::Instant::now() + within;
        loop {
            let u = self.usage();
            if settled(u) || std::time::Instant::now() >= deadline {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("keel.log")).unwrap_or_default()
    }

    /// SIGTERM, then a bounded wait for a clean exit.
    pub async fn stop(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "keel exited with {status}: {}",
                    self.log()
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "keel did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the target answered to a SCSI command.
#[derive(Debug, Default)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
    pub overflow: bool,
    pub underflow: bool,
    pub residual: u32,
    pub r2ts: u32,
}

impl ScsiResult {
    /// (sense key, ASC, ASCQ) of fixed-format sense.
    pub fn sense_triple(&self) -> (u8, u8, u8) {
        let s = &self.sense;
        if s.len() >= 14 {
            (s[2] & 0x0f, s[12], s[13])
        } else {
            (0xff, 0xff, 0xff)
        }
    }
}

/// Operational values the initiator learned at login.
#[derive(Clone, Debug)]
pub struct Params {
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    pub target_max_recv: u32,
}

/// CHAP credentials for [`Initiator::login_chap`].
#[derive(Clone, Debug)]
pub struct Chap<'a> {
    pub user: &'a str,
    pub secret: &'a [u8],
    /// The CHAP_A list offered, e.g. "7,6,5".
    pub algorithms: &'a str,
    /// Mutual CHAP: the target's expected name and secret.
    pub mutual: Option<(&'a str, &'a [u8])>,
}

pub struct Initiator {
    reader: FramedRead<OwnedReadHalf, PduCodec>,
    writer: OwnedWriteHalf,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
    itt: u32,
    header_digest: bool,
    data_digest: bool,
    pub params: Params,
    /// The InitiatorName this initiator logs in with.
    pub name: String,
}

impl Initiator {
    pub async fn connect(addr: SocketAddr) -> Initiator {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (rd, wr) = stream.into_split();
        let limits = FrameLimits {
            header_digest: false,
            data_digest: false,
            max_data_segment: 16 << 20,
        };
        Initiator {
            reader: FramedRead::new(rd, PduCodec::new(limits)),
            writer: wr,
            isid: [0x80, 0x12, 0x34, 0x56, 0x00, 0x01],
            tsih: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            itt: 0,
            header_digest: false,
            data_digest: false,
            params: Params {
                immediate_data: true,
                initial_r2t: true,
                first_burst: 65536,
                max_burst: 262144,
                target_max_recv: 8192,
            },
            name: INITIATOR.to_string(),
        }
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// Sends a PDU with the digests in force.
    pub async fn send(&mut self, req: &Request) {
        let (head, data) = req.encode();
        let mut parts = Vec::new();
        frame_parts(
            &head,
            &data,
            self.header_digest,
            self.data_digest,
            &mut parts,
        );
        let mut q = BufQueue::default();
        for p in parts {
            q.push(p);
        }
        self.writer.write_all_buf(&mut q).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// The next PDU, or `None` when the target closed the connection (or broke framing).
    pub async fn recv(&mut self) -> Option<Reply> {
        let raw = tokio::time::timeout(Duration::from_secs(20), self.reader.next())
            .await
            .expect("target did not answer within 20 s")?;
        let raw = raw.ok()?;
        assert!(raw.data_digest_ok, "data digest from target did not match");
        let reply = Reply::decode(&raw.bhs, raw.data).expect("target sent an undecodable PDU");
        let sn = match &reply {
            Reply::NopIn(p) => Some(p.sn),
            Reply::ScsiResponse(p) => Some(p.sn),
            Reply::TaskMgmt(p) => Some(p.sn),
            Reply::Login(p) => Some(p.sn),
            Reply::Text(p) => Some(p.sn),
            Reply::DataIn(p) => p.status.map(|_| p.sn),
            Reply::Logout(p) => Some(p.sn),
            Reply::R2t(p) => Some(p.sn),
            Reply::Async(p) => Some(p.sn),
            Reply::Reject(p) => Some(p.sn),
        };
        if let Some(sn) = sn {
            self.max_cmd_sn = sn.max_cmd_sn;
            let advances = match &reply {
                Reply::R2t(_) => false,
                Reply::NopIn(p) => p.itt != RESERVED_TAG,
                _ => true,
            };
            if advances {
                self.exp_stat_sn = sn.stat_sn.wrapping_add(1);
            }
        }
        Some(reply)
    }

    /// Waits for the connection to be closed by the target; panics if it sends something else
    /// than Rejects.
    pub async fn expect_closed(&mut self) {
        loop {
            match self.recv().await {
                None => return,
                Some(Reply::Reject(_)) => continue,
                Some(other) => panic!("expected the connection to close, got {other:?}"),
            }
        }
    }

    fn login_request(&self, csg: u8, nsg: u8, transit: bool, pairs: &[(&str, &str)]) -> Request {
        Request::Login(LoginRequest {
            transit,
            continue_bit: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: self.tsih,
            itt: 0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: text::encode(pairs),
        })
    }

    /// One login request/response exchange.
    pub async fn login_step(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        pairs: &[(&str, &str)],
    ) -> keel::wire::LoginResponse {
        let req = self.login_request(csg, nsg, transit, pairs);
        self.send(&req).await;
        match self.recv().await {
            Some(Reply::Login(r)) => r,
            other => panic!("expected a login response, got {other:?}"),
        }
    }

    /// A login whose last PDU and a SCSI command without data (`cdb`) go out in one write,
    /// as an initiator may pipeline them: checks the login succeeded and returns what came
    /// next, with the command's tag.
    pub async fn login_with_command_behind(&mut self, target: &str, cdb: &[u8]) -> (u32, Reply) {
        let name = self.name.clone();
        let first = [
            ("InitiatorName", name.as_str()),
            ("AuthMethod", "None"),
            ("TargetName", target),
            ("SessionType", "Normal"),
        ];
        let r = self.login_step(0, 1, true, &first).await;
        assert_eq!((r.status_class, r.status_detail), (0, 0), "security stage");
        let last = self.login_request(1, 3, true, &[("HeaderDigest", "None")]);
        let itt = self.next_itt();
        // The leading login's CmdSN is the session's first (RFC 7143 §11.12.7).
        let command = self.bare_command(itt, cdb, 0, false);
        let mut together = Vec::new();
        for req in [last, command] {
            let (head, data) = req.encode();
            let mut parts = Vec::new();
            frame_parts(&head, &data, false, false, &mut parts);
            together.extend(parts.iter().flat_map(|p| p.iter().copied()));
        }
        self.writer.write_all(&together).await.unwrap();
        match self.recv().await {
            Some(Reply::Login(r)) => {
                assert_eq!((r.status_class, r.status_detail), (0, 0), "last login");
                assert!(r.transit && r.nsg == 3);
                self.tsih = r.tsih;
            }
            other => panic!("expected the login response, got {other:?}"),
        }
        let next = self.recv().await.expect("the target closed the connection");
        (itt, next)
    }

    /// A complete login: security stage, then operational stage with `operational` keys.
    /// Returns the operational response's keys. Panics on failure.
    pub async fn login(
        &mut self,
        target: Option<&str>,
        operational: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let name = self.name.clone();
        let mut first: Vec<(&str, &str)> = vec![("InitiatorName", &name), ("AuthMethod", "None")];
        match target {
            Some(t) => {
                first.push(("TargetName", t));
                first.push(("SessionType", "Normal"));
            }
            None => first.push(("SessionType", "Discovery")),
        }
        let r = self.login_step(0, 1, true, &first).await;
        assert_eq!(
            (r.status_class, r.status_detail),
            (0, 0),
            "security stage failed"
        );
        self.operational(operational).await
    }

    /// A login with CHAP in the security stage (RFC 7143 §12.1.3), then the operational
    /// stage with no keys. Returns the status of the first refusal: `Err((class, detail))`.
    pub async fn login_chap(
        &mut self,
        target: Option<&str>,
        chap: &Chap<'_>,
    ) -> Result<(), (u8, u8)> {
        use keel::iscsi::chap;
        let name = self.name.clone();
        let mut first: Vec<(&str, &str)> =
            vec![("InitiatorName", &name), ("AuthMethod", "CHAP,None")];
        match target {
            Some(t) => {
                first.push(("TargetName", t));
                first.push(("SessionType", "Normal"));
            }
            None => first.push(("SessionType", "Discovery")),
        }
        let status = |r: &keel::wire::LoginResponse| match (r.status_class, r.status_detail) {
            (0, 0) => Ok(()),
            other => Err(other),
        };
        let r = self.login_step(0, 1, true, &first).await;
        status(&r)?;
        let keys = text::parse(&r.data).unwrap();
        let get = |keys: &[(String, String)], k: &str| {
            keys.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&keys, "AuthMethod").as_deref(), Some("CHAP"));
        assert!(!r.transit);
        let r = self
            .login_step(0, 1, false, &[("CHAP_A", chap.algorithms)])
            .await;
        status(&r)?;
        let keys = text::parse(&r.data).unwrap();
        let code: u32 = get(&keys, "CHAP_A").unwrap().parse().unwrap();
        let algorithm = chap::Algorithm::from_code(code).expect("CHAP_A from the target");
        let id = chap::parse_identifier(&get(&keys, "CHAP_I").unwrap()).unwrap();
        let challenge = chap::decode_binary(&get(&keys, "CHAP_C").unwrap()).unwrap();
        let answer = chap::encode_hex(&chap::response(
            algorithm,
            id,
            &chap::Secret::new(chap.secret.to_vec()),
            &challenge,
        ));
        let my_challenge: Vec<u8> = pattern(algorithm.challenge_len(), 99);
        let my_challenge_hex = chap::encode_hex(&my_challenge);
        let mut pairs = vec![("CHAP_N", chap.user), ("CHAP_R", answer.as_str())];
        if chap.mutual.is_some() {
            pairs.push(("CHAP_I", "201"));
            pairs.push(("CHAP_C", &my_challenge_hex));
        }
        let r = self.login_step(0, 1, true, &pairs).await;
        status(&r)?;
        assert!(r.transit && r.nsg == 1);
        if let Some((target_user, target_secret)) = chap.mutual {
            let keys = text::parse(&r.data).unwrap();
            assert_eq!(get(&keys, "CHAP_N").as_deref(), Some(target_user));
            let expected = chap::response(
                algorithm,
                201,
                &chap::Secret::new(target_secret.to_vec()),
                &my_challenge,
            );
            assert_eq!(
                get(&keys, "CHAP_R"),
                Some(chap::encode_hex(&expected)),
                "the target's mutual CHAP response"
            );
        }
        self.operational(&[]).await;
        Ok(())
    }

    /// The first login request only, with AuthMethod=None: the status it gets.
    pub async fn login_status(&mut self, target: Option<&str>) -> (u8, u8) {
        let name = self.name.clone();
        let mut first: Vec<(&str, &str)> = vec![("InitiatorName", &name), ("AuthMethod", "None")];
        match target {
            Some(t) => first.push(("TargetName", t)),
            None => first.push(("SessionType", "Discovery")),
        }
        let r = self.login_step(0, 1, true, &first).await;
        (r.status_class, r.status_detail)
    }

    /// The operational stage to full feature phase; learns digests and burst sizes.
    pub async fn operational(&mut self, operational: &[(&str, &str)]) -> Vec<(String, String)> {
        let r = self.login_step(1, 3, true, operational).await;
        assert_eq!(
            (r.status_class, r.status_detail),
            (0, 0),
            "operational stage failed"
        );
        assert!(r.transit && r.nsg == 3);
        self.tsih = r.tsih;
        let keys = text::parse(&r.data).unwrap();
        let get = |k: &str| keys.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        self.header_digest = get("HeaderDigest").as_deref() == Some("CRC32C");
        self.data_digest = get("DataDigest").as_deref() == Some("CRC32C");
        self.reader.decoder_mut().limits.header_digest = self.header_digest;
        self.reader.decoder_mut().limits.data_digest = self.data_digest;
        let offered = |k: &str| {
            operational
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        };
        let yes = |k: &str, default: bool| {
            get(k)
                .or_else(|| offered(k))
                .map(|v| v == "Yes")
                .unwrap_or(default)
        };
        let num = |k: &str, default: u32| get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        self.params = Params {
            immediate_data: yes("ImmediateData", true),
            initial_r2t: yes("InitialR2T", true),
            first_burst: num("FirstBurstLength", 65536),
            max_burst: num("MaxBurstLength", 262144),
            target_max_recv: num("MaxRecvDataSegmentLength", 8192),
        };
        keys
    }

    /// Sends a bare SCSI Command PDU (no immediate data, F bit set) with the next CmdSN and
    /// leaves the rest of the exchange to the caller.
    pub async fn send_command(&mut self, itt: u32, cdb: &[u8], expected_length: u32, write: bool) {
        let cmd = self.bare_command(itt, cdb, expected_length, write);
        self.send(&cmd).await;
    }

    /// A bare SCSI Command PDU (no immediate data, F bit set), taking the next CmdSN.
    fn bare_command(&mut self, itt: u32, cdb: &[u8], expected_length: u32, write: bool) -> Request {
        let mut padded = BytesMut::from(cdb);
        padded.resize(cdb.len().max(16), 0);
        let cmd = Request::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: true,
            read: !write && expected_length > 0,
            write,
            attr: 1,
            lun: [0; 8],
            itt,
            expected_length,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: padded.freeze(),
            bidi_read_length: None,
            data: Bytes::new(),
        });
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        cmd
    }

    /// Sends a SCSI command and runs it to its status: immediate and unsolicited data as
    /// negotiated, Data-Out for every R2T, Data-In collected.
    pub async fn scsi(
        &mut self,
        lun: u64,
        cdb: &[u8],
        read_len: u32,
        write: Option<&[u8]>,
    ) -> ScsiResult {
        let itt = self.next_itt();
        let lun_raw = keel::scsi::encode_lun(lun);
        let data = Bytes::copy_from_slice(write.unwrap_or(&[]));
        let edtl = if write.is_some() {
            data.len() as u32
        } else {
            read_len
        };
        let p = self.params.clone();
        let first_burst = if write.is_some() {
            p.first_burst.min(edtl) as usize
        } else {
            0
        };
        let immediate = if p.immediate_data {
            first_burst.min(p.target_max_recv as usize).min(data.len())
        } else {
            0
        };
        let unsolicited_end = if p.initial_r2t {
            immediate
        } else {
            first_burst
        };
        let mut padded = BytesMut::from(cdb);
        padded.resize(cdb.len().max(16), 0);
        let cmd = Request::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: unsolicited_end == immediate,
            read: write.is_none() && read_len > 0,
            write: write.is_some(),
            attr: 1,
            lun: lun_raw,
            itt,
            expected_length: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: padded.freeze(),
            bidi_read_length: None,
            data: data.slice(..immediate),
        });
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&cmd).await;
        if unsolicited_end > immediate {
            self.send_data(
                &data,
                lun_raw,
                itt,
                RESERVED_TAG,
                immediate,
                unsolicited_end - immediate,
            )
            .await;
        }
        let mut result = ScsiResult {
            data: vec![0; read_len as usize],
            ..Default::default()
        };
        let mut got = 0usize;
        loop {
            match self
                .recv()
                .await
                .expect("connection closed during a command")
            {
                Reply::R2t(r) => {
                    assert_eq!(r.itt, itt);
                    result.r2ts += 1;
                    self.send_data(
                        &data,
                        lun_raw,
                        itt,
                        r.ttt,
                        r.buffer_offset as usize,
                        r.desired_length as usize,
                    )
                    .await;
                }
                Reply::DataIn(d) => {
                    assert_eq!(d.itt, itt);
                    let at = d.buffer_offset as usize;
                    let data = d.data.bytes().expect("decoded Data-In is in memory");
                    result.data[at..at + data.len()].copy_from_slice(data);
                    got = got.max(at + d.data.len());
                    if let Some(status) = d.status {
                        result.status = status;
                        result.overflow = d.overflow;
                        result.underflow = d.underflow;
                        result.residual = d.residual;
                        result.data.truncate(got);
                        return result;
                    }
                }
                Reply::ScsiResponse(r) => {
                    assert_eq!(r.itt, itt);
                    result.status = r.status;
                    result.sense = r.sense.to_vec();
                    result.overflow = r.overflow;
                    result.underflow = r.underflow;
                    result.residual = r.residual;
                    result.data.truncate(got);
                    return result;
                }
                Reply::NopIn(n) if n.itt == RESERVED_TAG => self.answer_ping(n.ttt).await,
                other => panic!("unexpected PDU during a command: {other:?}"),
            }
        }
    }

    pub async fn send_data(
        &mut self,
        data: &Bytes,
        lun: [u8; 8],
        itt: u32,
        ttt: u32,
        offset: usize,
        len: usize,
    ) {
        let seg = self.params.target_max_recv as usize;
        let mut sent = 0;
        let mut data_sn = 0;
        while sent < len {
            let n = seg.min(len - sent);
            let pdu = Request::DataOut(DataOut {
                final_bit: sent + n == len,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: (offset + sent) as u32,
                data: data.slice(offset + sent..offset + sent + n),
            });
            self.send(&pdu).await;
            sent += n;
            data_sn += 1;
        }
    }

    pub async fn answer_ping(&mut self, ttt: u32) {
        let nop = Request::NopOut(NopOut {
            immediate: true,
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::new(),
        });
        self.send(&nop).await;
    }

    pub async fn read10(&mut self, lba: u32, blocks: u16) -> ScsiResult {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.scsi(0, &cdb, blocks as u32 * 512, None).await
    }

    pub async fn write10(&mut self, lba: u32, data: &[u8]) -> ScsiResult {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&((data.len() / 512) as u16).to_be_bytes());
        self.scsi(0, &cdb, 0, Some(data)).await
    }

    /// TEST UNIT READY until it stops reporting unit attentions.
    pub async fn clear_unit_attention(&mut self) {
        for _ in 0..5 {
            if self.scsi(0, &[0u8; 6], 0, None).await.status == 0 {
                return;
            }
        }
        panic!("unit attention did not clear");
    }

    pub async fn text(&mut self, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let itt = self.next_itt();
        let mut all = Vec::new();
        let mut ttt = RESERVED_TAG;
        let mut data = text::encode(pairs);
        loop {
            let req = Request::Text(TextRequest {
                immediate: false,
                final_bit: true,
                continue_bit: false,
                lun: [0; 8],
                itt,
                ttt,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: data.clone(),
            });
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
            self.send(&req).await;
            let Some(Reply::Text(r)) = self.recv().await else {
                panic!("expected a text response")
            };
            all.extend_from_slice(&r.data);
            if r.final_bit {
                break;
            }
            ttt = r.ttt;
            data = Bytes::new();
        }
        text::parse(&all).unwrap()
    }

    pub async fn logout(&mut self) -> u8 {
        let itt = self.next_itt();
        let req = Request::Logout(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        self.send(&req).await;
        match self.recv().await {
            Some(Reply::Logout(r)) => r.response,
            other => panic!("expected a logout response, got {other:?}"),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A logged-in session with its power-on unit attention cleared, on its own ISID.
pub async fn honest_session(keel: &Keel, isid: u8) -> Initiator {
    honest_session_at(keel.addr, isid).await
}

/// [`honest_session`] against any address (e.g. a [`KeelProcess`]).
pub async fn honest_session_at(addr: SocketAddr, isid: u8) -> Initiator {
    let mut i = Initiator::connect(addr).await;
    i.isid[5] = isid;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    i
}

/// Writes 64 KiB and reads it back verified: the session still does honest I/O. Seeds map to
/// LBAs below 13,000 blocks, inside the smallest LUN the tests use.
pub async fn still_serves(i: &mut Initiator, seed: u64) {
    let data = pattern(65536, seed);
    let lba = (seed % 100) as u32 * 128;
    assert_eq!(i.write10(lba, &data).await.status, 0);
    let r = i.read10(lba, 128).await;
    assert!(r.status == 0 && r.data == data);
}
