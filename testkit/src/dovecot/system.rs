//! What a Dovecot instance needs from the machine: its programs, the mail
//! user's ids, a scratch directory it can traverse, free ports, and the
//! generated configuration text.

use super::*;

/// Absolute path of a Dovecot program (`dovecot` lives in /usr/sbin, which
/// is not on every PATH).
pub(super) fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{NOT_INSTALLED} ({name} not found)"))
}

pub(super) fn ensure_installed() {
    program("dovecot");
    program("doveadm");
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("0");
    assert_eq!(
        euid, "0",
        "the Dovecot harness must run as root (Dovecot switches to the mail user {MAIL_USER}); run the test suite through scripts/test"
    );
}

/// Numeric id of `name` in /etc/passwd or /etc/group.
pub(super) fn lookup_id(file: &str, name: &str) -> u32 {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2).and_then(|id| id.parse().ok()))
        .unwrap_or_else(|| panic!("{name} not found in {file}"))
}

pub(super) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// Where instance dirs go: `$M2T_TEST_TMPDIR` if set, else `/dev/shm` when it
/// is a world-writable tmpfs-style dir (on this VM, file creation on the ext4
/// /tmp gets 5-10x slower whenever the CPUs are busy, e.g. parallel tests),
/// else the usual temp dir.
pub(super) fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("M2T_TEST_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    match fs::metadata(shm) {
        Ok(m) if m.is_dir() && m.permissions().mode() & 0o1777 == 0o1777 => shm.to_path_buf(),
        _ => std::env::temp_dir(),
    }
}

/// The mail user must reach `<dir>/mail`: every ancestor needs o+x.
pub(super) fn check_traversable(dir: &Path) {
    for anc in dir.ancestors().skip(1) {
        let mode = fs::metadata(anc)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", anc.display()))
            .permissions()
            .mode();
        assert!(
            mode & 0o001 != 0,
            "{} is not traversable by the mail user ({MAIL_USER}); set TMPDIR to a world-traversable directory such as /tmp",
            anc.display()
        );
    }
}

/// Five distinct free loopback ports (bound together, then released).
pub(super) fn free_ports() -> Ports {
    let ls: Vec<TcpListener> = (0..5)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port"))
        .collect();
    let p: Vec<u16> = ls
        .iter()
        .map(|l| l.local_addr().expect("no local addr").port())
        .collect();
    Ports {
        imap: p[0],
        imaps: p[1],
        pop3: p[2],
        pop3s: p[3],
        submission: p[4],
    }
}

pub(super) fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn config_text(
    dir: &Path,
    instance_name: &str,
    ports: Ports,
    oauth2_args: &Path,
    pki: &crate::certs::PkiFiles,
    uid: u32,
    gid: u32,
    opts: &DovecotOptions,
    debug: bool,
) -> String {
    let d = dir.display();
    let dh = Path::new("/usr/share/dovecot/dh.pem");
    let ssl_dh = if dh.exists() {
        format!("ssl_dh = <{}\n", dh.display())
    } else {
        String::new()
    };
    let (mechanisms, plain_passdb) = match &opts.plain_password {
        Some(pw) => {
            assert!(
                !pw.contains([' ', '\n', '"', '\'']),
                "plain_password must not contain spaces or quotes"
            );
            (
                "xoauth2 oauthbearer plain login",
                format!(
                    "passdb {{\n  driver = static\n  mechanisms = plain login\n  args = password={pw}\n}}\n"
                ),
            )
        }
        None => ("xoauth2 oauthbearer", String::new()),
    };
    let imap_capability = match &opts.imap_capability {
        Some(caps) => {
            assert!(!caps.contains('\n'), "imap_capability must be one line");
            format!("imap_capability = {caps}\n")
        }
        None => String::new(),
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let (protocols, submission) = match opts.submission_relay_port {
        Some(relay) => (
            "imap pop3 submission",
            format!(
                r#"
# SMTP submission relaying every mail to a capture sink on loopback.
hostname = mx.test.example
postmaster_address = postmaster@test.example
submission_relay_host = 127.0.0.1
submission_relay_port = {relay}
submission_relay_ssl = no
submission_relay_trusted = no

service submission-login {{
  inet_listener submission {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"#,
                port = ports.submission,
            ),
        ),
        None => ("imap pop3", String::new()),
    };
    format!(
        r#"# Generated by testkit/src/dovecot.rs; standalone (no /etc/dovecot includes).
instance_name = {instance_name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
debug_log_path = {d}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
shutdown_clients = yes

default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull

first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{ssl_dh}ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes

auth_mechanisms = {mechanisms}
auth_verbose = yes
auth_debug = {debug}
auth_cache_size = 0
auth_failure_delay = 0

mail_location = maildir:{d}/mail/%u
mail_plugins =
# Throw-away data: skip fsync (it stalls the shared disk for parallel tests).
mail_fsync = never
mail_debug = {debug}
pop3_uidl_format = %08Xu%08Xv
{imap_capability}
namespace inbox {{
  inbox = yes
  prefix =
  separator = /
}}

passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2_args}
}}
{plain_passdb}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%u allow_all_users=yes
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}

service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}

service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{submission}"#,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        oauth2_args = oauth2_args.display(),
        debug = yes_no(debug),
        imap = ports.imap,
        imaps = ports.imaps,
        pop3 = ports.pop3,
        pop3s = ports.pop3s,
    )
}
