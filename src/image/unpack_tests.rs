//! Unpacking tests: they build tars byte by byte (hostile names included)
//! and need root (chown, device nodes, trusted.* xattrs); without root they
//! say so and return.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use tar::EntryType;

use super::*;

const LIMITS: Limits = Limits {
    entries: 1000,
    bytes: 1 << 20,
};

/// Both steps of a layer's unpack, from a file.
fn unpack(blob: &Path, target: &Path, lowers: &[PathBuf], diff_id: &str, limits: Limits) -> R<()> {
    let mut src = io::BufReader::new(File::open(blob).unwrap());
    super::unpack(&mut src, target, diff_id, limits)?.finish(target, lowers)
}

fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: unpack tests need root (chown, mknod, trusted xattrs)");
    false
}

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn add(mut self, kind: EntryType, path: &str, link: &str, mode: u32, data: &[u8]) -> Layer {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_000_000);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, path: &str, data: &str) -> Layer {
        self.add(EntryType::Regular, path, "", 0o640, data.as_bytes())
    }
    fn dir(self, path: &str, mode: u32) -> Layer {
        self.add(EntryType::Directory, path, "", mode, b"")
    }
    fn symlink(self, path: &str, target: &str) -> Layer {
        self.add(EntryType::Symlink, path, target, 0o777, b"")
    }
    fn hardlink(self, path: &str, target: &str) -> Layer {
        self.add(EntryType::Link, path, target, 0o644, b"")
    }
    /// Writes the tar (gzip-compressed when asked) and returns its path
    /// and diff_id.
    fn write(self, dir: &Path, name: &str, gzip: bool) -> (PathBuf, String) {
        let tar = self.0.into_inner().unwrap();
        let diff_id = crate::image::content::digest_of(&tar);
        let path = dir.join(name);
        let bytes = if gzip {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        } else {
            tar
        };
        std::fs::write(&path, bytes).unwrap();
        (path, diff_id)
    }
}

#[test]
fn unpacks_files_links_whiteouts_and_opaque_dirs() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (blob, diff) = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/hosts", "hosts")
        .symlink("etc/link", "/etc/hosts")
        .hardlink("etc/hard", "etc/hosts")
        .file("deep/a/b/c", "implicit parents")
        .add(EntryType::Regular, "etc/.wh.gone", "", 0o644, b"")
        .add(EntryType::Regular, "opq/.wh..wh..opq", "", 0o644, b"")
        .write(tmp.path(), "l1", true);
    let out = tmp.path().join("out");
    unpack(&blob, &out, &[], &diff, LIMITS).unwrap();
    let hosts = std::fs::metadata(out.join("etc/hosts")).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("etc/hosts")).unwrap(),
        "hosts"
    );
    assert_eq!(
        (hosts.uid(), hosts.gid(), hosts.mode() & 0o7777),
        (1000, 1001, 0o640)
    );
    assert_eq!(hosts.mtime(), 1_000_000);
    assert_eq!(hosts.nlink(), 2, "hardlink within the layer is a link");
    assert_eq!(
        std::fs::read_link(out.join("etc/link")).unwrap(),
        Path::new("/etc/hosts")
    );
    let gone = std::fs::symlink_metadata(out.join("etc/gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &gone.file_type()
    ));
    assert_eq!(gone.rdev(), 0);
    let opq = rustix::fs::getxattr(out.join("opq"), OPAQUE_XATTR, &mut [0u8; 8]).unwrap();
    assert_eq!(opq, 1);
    let etc = std::fs::metadata(out.join("etc")).unwrap();
    assert_eq!(etc.mtime(), 1_000_000, "directory times are set last");
    assert_eq!(
        std::fs::metadata(out.join("deep/a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(out.join("deep/a")).unwrap().mtime(),
        0,
        "implicit dirs keep their time"
    );
}

#[test]
fn implicit_parents_and_hardlinks_come_from_lower_layers() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (b1, d1) = Layer::new()
        .dir("tmp/", 0o1777)
        .file("bin/tool", "lower content")
        .write(tmp.path(), "l1", false);
    let lower = tmp.path().join("lower");
    unpack(&b1, &lower, &[], &d1, LIMITS).unwrap();
    let (b2, d2) = Layer::new()
        .file("tmp/x", "x")
        .hardlink("bin/tool2", "bin/tool")
        .write(tmp.path(), "l2", false);
    let upper = tmp.path().join("upper");
    unpack(&b2, &upper, std::slice::from_ref(&lower), &d2, LIMITS).unwrap();
    let t = std::fs::metadata(upper.join("tmp")).unwrap();
    assert_eq!(
        t.mode() & 0o7777,
        0o1777,
        "implicit /tmp keeps the lower mode"
    );
    assert_eq!((t.uid(), t.gid()), (1000, 1001));
    assert_eq!(
        std::fs::read_to_string(upper.join("bin/tool2")).unwrap(),
        "lower content"
    );
    assert_eq!(
        std::fs::metadata(upper.join("bin/tool2")).unwrap().nlink(),
        1,
        "copied"
    );
}

/// The upper layer unpacks before the lower one exists (as in a pull,
/// where all download at once); its implicit parents and hardlinks to
/// lower files are completed afterwards, and later entries of the layer
/// that replaced them win.
#[test]
fn lower_layer_work_waits_and_later_entries_win() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (b2, d2) = Layer::new()
        .file("tmp/x", "x")
        .file("etc/conf/a", "a")
        .dir("etc/", 0o750)
        .hardlink("bin/copy", "bin/tool")
        .hardlink("bin/alias", "bin/copy")
        .hardlink("bin/replaced", "bin/tool")
        .file("bin/replaced", "own")
        .file("gone/sub/f", "f")
        .symlink("gone", "tmp")
        .write(tmp.path(), "l2", true);
    let upper = tmp.path().join("upper");
    let mut src = io::BufReader::new(File::open(&b2).unwrap());
    let pending = super::unpack(&mut src, &upper, &d2, LIMITS).unwrap();
    let (b1, d1) = Layer::new()
        .dir("tmp/", 0o1777)
        .dir("etc/conf/", 0o711)
        .dir("gone/", 0o700)
        .file("bin/tool", "lower content")
        .write(tmp.path(), "l1", false);
    let lower = tmp.path().join("lower");
    unpack(&b1, &lower, &[], &d1, LIMITS).unwrap();
    pending
        .finish(&upper, std::slice::from_ref(&lower))
        .unwrap();

    let mode = |p: &str| std::fs::symlink_metadata(upper.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777, "implicit parent from the lower layer");
    assert_eq!(mode("etc/conf"), 0o711);
    assert_eq!(mode("etc"), 0o750, "the layer's own entry wins");
    assert_eq!(std::fs::metadata(upper.join("tmp")).unwrap().uid(), 1000);
    let copy = std::fs::metadata(upper.join("bin/copy")).unwrap();
    assert_eq!(
        std::fs::read_to_string(upper.join("bin/alias")).unwrap(),
        "lower content"
    );
    assert_eq!((copy.nlink(), copy.mode() & 0o7777), (2, 0o640));
    assert_eq!(
        std::fs::read_to_string(upper.join("bin/replaced")).unwrap(),
        "own"
    );
    // "gone" became a symlink to tmp: what it pointed to is untouched
    // (tmp keeps the metadata of tmp, not of gone/sub).
    assert!(
        std::fs::symlink_metadata(upper.join("gone"))
            .unwrap()
            .is_symlink()
    );
    assert!(!upper.join("tmp/sub").exists());

    // A hardlink to a file no layer has fails the layer.
    let (b3, d3) = Layer::new()
        .hardlink("nowhere", "bin/none")
        .write(tmp.path(), "l3", true);
    let err = unpack(&b3, &tmp.path().join("l3-out"), &[lower], &d3, LIMITS).unwrap_err();
    assert!(err.to_string().contains("which is in no layer"), "{err}");
}

#[test]
fn hostile_layers_never_write_outside() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    let o = outside.display().to_string();
    let o = o.trim_start_matches('/');

    // Refused outright: '..' names and hardlinks out of the layer.
    let cases = [
        Layer::new().file("../escape", "x"),
        Layer::new().file("a/../../escape", "x"),
        Layer::new().hardlink("h", "../outside/secret"),
        Layer::new().hardlink("h", &format!("/{o}/secret")),
        Layer::new()
            .symlink("up", "/")
            .hardlink("h", &format!("up/{o}/secret")),
        // A dangling symlink as parent: not created through, refused.
        Layer::new()
            .symlink("direct", &outside.display().to_string())
            .file("direct/via-direct", "z"),
    ];
    for (i, layer) in cases.into_iter().enumerate() {
        let (blob, diff) = layer.write(tmp.path(), &format!("bad{i}"), false);
        let target = tmp.path().join(format!("t{i}"));
        assert!(
            unpack(&blob, &target, &[], &diff, LIMITS).is_err(),
            "case {i} must fail"
        );
    }
    // Absolute names and symlinked parents resolve inside the layer.
    let (blob, diff) = Layer::new()
        .file(&format!("/{o}/abs"), "abs")
        .symlink("root", "/")
        .file(&format!("root/{o}/via-root"), "x")
        .symlink("dots", "../../../../../..")
        .file(&format!("dots/{o}/via-dots"), "y")
        .write(tmp.path(), "sneaky", false);
    let target = tmp.path().join("sneaky-out");
    unpack(&blob, &target, &[], &diff, LIMITS).unwrap();
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "nothing was written outside the layer");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
    for f in ["abs", "via-root", "via-dots"] {
        assert!(
            target.join(o).join(f).exists(),
            "{f} lands inside the layer"
        );
    }
}

#[test]
fn diff_id_mismatch_is_an_error() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (blob, _) = Layer::new().file("a", "a").write(tmp.path(), "l", true);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = unpack(&blob, &tmp.path().join("o"), &[], &wrong, LIMITS).unwrap_err();
    assert!(matches!(err, UnpackError::DiffId { .. }), "{err}");
}

#[test]
fn entry_count_content_size_and_name_length_are_bounded() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        entries: 3,
        bytes: 10,
    };
    // At the limits: three entries, ten bytes.
    let (blob, diff) = Layer::new()
        .file("a", "12345")
        .file("b", "1234")
        .file("c", "1")
        .write(tmp.path(), "ok", true);
    unpack(&blob, &tmp.path().join("ok-out"), &[], &diff, limits).unwrap();

    let (blob, diff) = Layer::new()
        .file("a", "1")
        .file("b", "1")
        .file("c", "1")
        .file("d", "1")
        .write(tmp.path(), "many", true);
    let err = unpack(&blob, &tmp.path().join("many-out"), &[], &diff, limits).unwrap_err();
    assert!(err.to_string().contains("more than 3 entries"), "{err}");

    let (blob, diff) =
        Layer::new()
            .file("a", "123456")
            .file("b", "12345")
            .write(tmp.path(), "big", true);
    let err = unpack(&blob, &tmp.path().join("big-out"), &[], &diff, limits).unwrap_err();
    assert!(err.to_string().contains("more than 10 bytes"), "{err}");

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    let long = format!("{}/f", "d/".repeat(2100));
    b.append_data(&mut h, &long, &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let diff = crate::image::content::digest_of(&tar);
    let blob = tmp.path().join("long");
    std::fs::write(&blob, tar).unwrap();
    let err = unpack(&blob, &tmp.path().join("long-out"), &[], &diff, LIMITS).unwrap_err();
    assert!(err.to_string().contains("longer than 4096"), "{err}");
}
