//! The Store against real files in temporary directories.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::config::load;

/// A main file in a temporary directory, with `include = "targets.d"` and LUN files under
/// `data/`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A main file whose `[server]` is followed by `rest` (targets of the main file).
    fn new(rest: &str) -> Fixture {
        Fixture::with_server("include = \"targets.d\"\n", rest)
    }

    fn with_server(server_extra: &str, rest: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let main = format!(
            "# the operator's main file\n[server]\nportals = [\"127.0.0.1:3260\"]\n\
             data_dir = \"{}\"\n{server_extra}\n{rest}",
            dir.path().join("data").display()
        );
        fs::write(dir.path().join("keel.toml"), main).unwrap();
        Fixture { dir }
    }

    fn main(&self) -> PathBuf {
        self.dir.path().join("keel.toml")
    }

    fn include(&self) -> PathBuf {
        self.dir.path().join("targets.d")
    }

    /// Writes `<include>/<file>`.
    fn included(&self, file: &str, text: &str) -> PathBuf {
        fs::create_dir_all(self.include()).unwrap();
        let path = self.include().join(file);
        fs::write(&path, text).unwrap();
        path
    }

    fn store(&self) -> Store {
        Store::load(&self.main()).unwrap()
    }

    /// Every file under the directory with its bytes, to show that nothing changed.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push((path.clone(), fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out.sort();
        out
    }
}

fn name(n: &str) -> String {
    format!("iqn.2026-11.org.example:{n}")
}

/// A `[[target]]` table with one 1 MiB file LUN.
fn target_text(n: &str) -> String {
    format!(
        "[[target]]\nname = \"{}\"\n[[target.lun]]\nlun = 0\nfile = \"{n}.img\"\nsize = \"1MiB\"\n",
        name(n)
    )
}

fn table(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

fn target_spec(n: &str) -> toml::Table {
    table(&format!(
        "name = \"{}\"\nalias = \"{n}\"\n[[lun]]\nlun = 0\nfile = \"{n}.img\"\nsize = \"1MiB\"\n",
        name(n)
    ))
}

fn lun_spec(lun: u64, file: &str) -> toml::Table {
    table(&format!(
        "lun = {lun}\nfile = \"{file}\"\nsize = \"1MiB\"\n"
    ))
}

fn names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = store
        .config()
        .targets
        .iter()
        .map(|t| t.name.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn included_files_are_read_in_name_order_and_others_skipped() {
    let f = Fixture::new(&target_text("main"));
    f.included("b.toml", &target_text("b"));
    f.included(
        "a.toml",
        &format!("# two here\n{}{}", target_text("a1"), target_text("a2")),
    );
    for skipped in [
        ".hidden.toml",
        ".a.toml.keel-tmp",
        "notes.txt",
        "c.toml~",
        "#c.toml#",
    ] {
        f.included(skipped, "this is not TOML [[[");
    }
    fs::create_dir_all(f.include().join("sub.toml")).unwrap();
    f.included("sub.toml/x.toml", &target_text("nested"));
    let store = f.store();
    let order: Vec<&str> = store
        .config()
        .targets
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(order, [name("main"), name("a1"), name("a2"), name("b")]);
    assert_eq!(store.config().include, Some(f.include()));
    assert_eq!(store.origin(&name("main")), Some(&Origin::Main));
    assert_eq!(
        store.origin(&name("a2")),
        Some(&Origin::Included(f.include().join("a.toml")))
    );
    assert!(
        store.config().warnings.is_empty(),
        "{:?}",
        store.config().warnings
    );
    // `keel check` reads the same whole.
    assert_eq!(load(&f.main()).unwrap(), *store.config());
}

#[test]
fn errors_are_located_in_the_file_they_are_in() {
    let f = Fixture::new("[[target]]\nname = \"BAD\"\n[[target.lun]]\nlun = 0\nfile = \"x.img\"\n");
    f.included(
        "a.toml",
        &format!(
            "{}\n[[target.lun]]\nlun = 1\nfile = \"y.img\"\nsize = \"12Q\"\n",
            target_text("a")
        ),
    );
    f.included("b.toml", "[server]\nqueue_depth = 4\n");
    f.included("c.toml", "[[target]\n");
    let errors = Store::load(&f.main()).err().unwrap();
    assert_eq!(errors.kind, ErrorKind::Invalid);
    let shown = errors.to_string();
    let main = f.main().display().to_string();
    let inc = |file: &str| f.include().join(file).display().to_string();
    for expected in [
        format!("{main}:8: target name \"BAD\""),
        format!(
            "{}:11: target \"{}\" LUN 1: size \"12Q\" has an unknown unit",
            inc("a.toml"),
            name("a")
        ),
        format!("{}:1: unknown field `server`", inc("b.toml")),
        "(an included file holds only [[target]] tables)".to_string(),
        format!("{}:1: ", inc("c.toml")),
    ] {
        assert!(shown.contains(&expected), "{expected}\nin:\n{shown}");
    }
    assert_eq!(shown.lines().count(), 4, "{shown}");
}

#[test]
fn a_name_declared_in_two_files_names_both() {
    let f = Fixture::new(&format!("\n{}", target_text("a")));
    f.included("x.toml", &format!("# x\n\n{}", target_text("a")));
    let shown = Store::load(&f.main()).err().unwrap().to_string();
    let main = f.main().display().to_string();
    let x = f.include().join("x.toml").display().to_string();
    assert_eq!(
        shown,
        format!(
            "{x}:4: target \"{}\" is declared twice (first at {main}:9)",
            name("a")
        )
    );
    // Within one file the message points at the line.
    let f = Fixture::new(&format!("{}{}", target_text("a"), target_text("a")));
    let shown = Store::load(&f.main()).err().unwrap().to_string();
    assert!(
        shown.ends_with("is declared twice (first at line 8)"),
        "{shown}"
    );
}

#[test]
fn a_missing_include_directory_is_empty_with_a_warning_and_made_on_first_add() {
    let f = Fixture::new(&target_text("main"));
    let mut store = f.store();
    assert_eq!(names(&store), [name("main")]);
    let warnings = &store.config().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .located("keel.toml")
            .starts_with("keel.toml:5: include directory")
            && warnings[0].message.contains("does not exist"),
        "{warnings:?}"
    );
    assert!(!f.include().exists());
    store.add_target(&target_spec("new")).unwrap();
    assert!(f.include().join(format!("{}.toml", name("new"))).is_file());
}

#[test]
fn an_include_directory_that_is_a_file_is_an_error() {
    let f = Fixture::new("");
    fs::write(f.include(), "not a directory").unwrap();
    let shown = Store::load(&f.main()).err().unwrap().to_string();
    assert!(shown.contains(":5: include directory"), "{shown}");
}

#[test]
fn add_and_remove_a_target_round_trip() {
    let f = Fixture::new(&target_text("main"));
    let mut store = f.store();
    let change = store.add_target(&target_spec("new")).unwrap();
    assert_eq!(change.targets_added.len(), 1);
    assert_eq!(change.targets_added[0].name, name("new"));
    assert_eq!(change.targets_added[0].alias.as_deref(), Some("new"));
    let file = f.include().join(format!("{}.toml", name("new")));
    let text = fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!(
            "[[target]]\nname = \"{}\"\nalias = \"new\"\n",
            name("new")
        )),
        "{text}"
    );
    assert_eq!(
        store.origin(&name("new")),
        Some(&Origin::Included(file.clone()))
    );
    assert_eq!(names(&store), [name("main"), name("new")]);
    // What was saved is what a fresh load (or a reload) sees.
    assert!(store.reload().unwrap().is_empty());
    assert_eq!(f.store().config(), store.config());

    // The LUN's backing file exists (the service made it); removing keeps it.
    let backing = f.dir.path().join("data/new.img");
    fs::create_dir_all(backing.parent().unwrap()).unwrap();
    fs::write(&backing, b"data").unwrap();
    let change = store.remove_target(&name("new")).unwrap();
    assert_eq!(change.targets_removed, [name("new")]);
    assert!(!file.exists(), "the file held only this target");
    assert_eq!(fs::read(&backing).unwrap(), b"data");
    assert_eq!(names(&store), [name("main")]);
    assert!(store.origin(&name("new")).is_none());
    assert!(store.reload().unwrap().is_empty());
}

#[test]
fn removing_one_of_several_targets_edits_its_file_and_keeps_the_rest() {
    let f = Fixture::new(&format!(
        "# main target\n{}\n# the second\n{}",
        target_text("m1"),
        target_text("m2")
    ));
    let shared = f.included(
        "shared.toml",
        &format!(
            "# shared file\n{}\n# keep me\n{}",
            target_text("s1"),
            target_text("s2")
        ),
    );
    let mut store = f.store();
    store.remove_target(&name("s1")).unwrap();
    let text = fs::read_to_string(&shared).unwrap();
    assert!(
        !text.contains(&name("s1")) && text.contains(&name("s2")),
        "{text}"
    );
    assert!(text.contains("# keep me"), "{text}");
    store.remove_target(&name("m1")).unwrap();
    let text = fs::read_to_string(f.main()).unwrap();
    assert!(
        !text.contains(&name("m1")) && text.contains(&name("m2")),
        "{text}"
    );
    assert!(
        text.starts_with("# the operator's main file\n[server]"),
        "{text}"
    );
    assert!(text.contains("# the second"), "{text}");
    assert_eq!(names(&store), [name("m2"), name("s2")]);
    assert!(store.reload().unwrap().is_empty());
    // The main file stays even when its last target goes.
    store.remove_target(&name("m2")).unwrap();
    assert!(f.main().is_file());
    assert!(store.reload().unwrap().is_empty());
    // An unknown name.
    let e = store.remove_target(&name("nope")).err().unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[test]
fn lun_changes_edit_the_right_file_and_keep_comments() {
    let main_target = "# main's target\n[[target]]\nname = \"iqn.2026-11.org.example:m\"\n\
                       [[target.lun]]\nlun = 0 # the first\nfile = \"m0.img\"\nsize = \"1MiB\" # small\n";
    let f = Fixture::new(main_target);
    let included = f.included(
        "i.toml",
        &format!(
            "# included, two targets\n{}\n# the other one\n{}",
            target_text("i1"),
            target_text("i2")
        ),
    );
    let mut store = f.store();

    // add_lun on an included target: the new table lands under that target, before the next.
    let change = store
        .add_lun(&name("i1"), &lun_spec(3, "i1-3.img"))
        .unwrap();
    let t = &change.targets_changed[0];
    assert_eq!(t.new.name, name("i1"));
    assert_eq!((t.luns_added.len(), t.luns_added[0].lun), (1, 3));
    assert!(t.luns_removed.is_empty() && !t.access_changed);
    let text = fs::read_to_string(&included).unwrap();
    let lun3 = text.find("lun = 3").unwrap();
    let other = text.find(&name("i2")).unwrap();
    assert!(lun3 < other, "{text}");
    assert!(
        text.contains("# included, two targets") && text.contains("# the other one"),
        "{text}"
    );
    let main_before = fs::read_to_string(f.main()).unwrap();

    // resize_lun on the main file's target keeps the comment after the value.
    let change = store.resize_lun(&name("m"), 0, 4 << 20).unwrap();
    let t = &change.targets_changed[0];
    assert_eq!(t.luns_resized.len(), 1);
    assert_eq!(
        t.luns_resized[0].backing,
        Backing::File {
            path: f.dir.path().join("data/m0.img"),
            create_size: Some(4 << 20)
        }
    );
    let main_after = fs::read_to_string(f.main()).unwrap();
    assert_eq!(
        main_after,
        main_before.replace("size = \"1MiB\" # small", "size = \"4MiB\" # small")
    );
    assert_eq!(
        fs::read_to_string(&included).unwrap(),
        text,
        "only one file changes"
    );

    // remove_lun.
    store.add_lun(&name("m"), &lun_spec(1, "m1.img")).unwrap();
    let change = store.remove_lun(&name("m"), 0).unwrap();
    assert_eq!(change.targets_changed[0].luns_removed, [0]);
    let text = fs::read_to_string(f.main()).unwrap();
    assert!(
        !text.contains("m0.img") && text.contains("m1.img"),
        "{text}"
    );
    assert!(text.contains("# main's target"), "{text}");

    // Every change was saved as the store holds it.
    assert!(store.reload().unwrap().is_empty());
}

#[test]
fn inline_lun_arrays_are_edited_too() {
    let f = Fixture::new(
        "[[target]]\nname = \"iqn.2026-11.org.example:m\"\n\
         lun = [{ lun = 0, file = \"m0.img\", size = \"1MiB\" }]\n",
    );
    let mut store = f.store();
    store.add_lun(&name("m"), &lun_spec(1, "m1.img")).unwrap();
    store.resize_lun(&name("m"), 0, 2 << 20).unwrap();
    store.remove_lun(&name("m"), 1).unwrap();
    let text = fs::read_to_string(f.main()).unwrap();
    assert!(
        text.contains("lun = [{ lun = 0, file = \"m0.img\", size = \"2MiB\" }]"),
        "{text}"
    );
    assert!(store.reload().unwrap().is_empty());
}

#[test]
fn a_bad_change_changes_nothing() {
    let f = Fixture::new(&target_text("m"));
    f.included("i.toml", &target_text("i"));
    let block = "[[target]]\nname = \"iqn.2026-11.org.example:blk\"\n[[target.lun]]\nlun = 0\nblock = \"/dev/null\"\n";
    f.included("blk.toml", block);
    let mut store = f.store();
    let before = f.snapshot();
    let config = store.config().clone();
    let mut bad_target = target_spec("x");
    bad_target.insert("colour".into(), toml::Value::String("red".into()));
    let mut bad_name = target_spec("x");
    bad_name.insert(
        "name".into(),
        toml::Value::String("../../etc/passwd".into()),
    );
    let attempts: Vec<(&str, ErrorKind, Result<ConfigDiff, ConfigErrors>)> = vec![
        (
            "unknown key",
            ErrorKind::Invalid,
            store.add_target(&bad_target),
        ),
        ("bad name", ErrorKind::Invalid, store.add_target(&bad_name)),
        (
            "no LUN",
            ErrorKind::Invalid,
            store.add_target(&table(&format!("name = \"{}\"", name("x")))),
        ),
        (
            "name taken",
            ErrorKind::Conflict,
            store.add_target(&target_spec("i")),
        ),
        (
            "bad size",
            ErrorKind::Invalid,
            store.add_lun(&name("i"), &table("lun = 1\nfile = \"a\"\nsize = \"12Q\"")),
        ),
        (
            "LUN taken",
            ErrorKind::Conflict,
            store.add_lun(&name("i"), &lun_spec(0, "b.img")),
        ),
        (
            "no target",
            ErrorKind::NotFound,
            store.add_lun(&name("none"), &lun_spec(1, "b.img")),
        ),
        (
            "last LUN",
            ErrorKind::Conflict,
            store.remove_lun(&name("i"), 0),
        ),
        (
            "no LUN",
            ErrorKind::NotFound,
            store.remove_lun(&name("i"), 9),
        ),
        (
            "shrink",
            ErrorKind::Conflict,
            store.resize_lun(&name("i"), 0, 512 << 10),
        ),
        (
            "not a block multiple",
            ErrorKind::Invalid,
            store.resize_lun(&name("i"), 0, (2 << 20) + 1),
        ),
        (
            "block device",
            ErrorKind::Invalid,
            store.resize_lun(&name("blk"), 0, 2 << 20),
        ),
    ];
    for (what, kind, result) in attempts {
        let e = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(e.kind, kind, "{what}: {e}");
    }
    assert_eq!(f.snapshot(), before, "no file changed");
    assert_eq!(*store.config(), config, "no state changed");
    // The same size again is no change at all.
    assert!(store.resize_lun(&name("i"), 0, 1 << 20).unwrap().is_empty());
    assert_eq!(f.snapshot(), before);
}

#[test]
fn a_spec_error_is_told_without_lines_of_a_file_that_does_not_exist() {
    let f = Fixture::new("");
    let mut store = f.store();
    let e = store
        .add_lun(&name("none"), &lun_spec(1, "x"))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: no target \"{}\" is configured",
            f.main().display(),
            name("none")
        )
    );
    store.add_target(&target_spec("t")).unwrap();
    let e = store
        .add_lun(&name("t"), &table("lun = 1\nfile = \"a\"\nsize = \"12Q\""))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "new LUN of target \"{0}\": target \"{0}\" LUN 1: size \"12Q\" has an unknown unit \
             (use B, KiB, MiB, GiB or TiB)",
            name("t")
        )
    );
}

#[test]
fn a_shrink_below_the_file_on_disk_is_refused() {
    let f = Fixture::new(&target_text("m"));
    let mut store = f.store();
    let backing = f.dir.path().join("data/m.img");
    fs::create_dir_all(backing.parent().unwrap()).unwrap();
    fs::File::create(&backing)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let e = store.resize_lun(&name("m"), 0, 4 << 20).err().unwrap();
    assert!(
        e.to_string()
            .contains("from 8388608 to 4194304 bytes would destroy data"),
        "{e}"
    );
    store.resize_lun(&name("m"), 0, 8 << 20).unwrap();
}

#[test]
fn an_operators_saved_edit_of_the_file_is_kept() {
    let f = Fixture::new("");
    let file = f.included("t.toml", &target_text("t"));
    let mut store = f.store();
    // The operator edits the file (a new alias) and saves, without a reload.
    let edited = fs::read_to_string(&file)
        .unwrap()
        .replace("[[target.lun]]", "alias = \"by hand\"\n[[target.lun]]");
    fs::write(&file, edited).unwrap();
    let change = store.add_lun(&name("t"), &lun_spec(1, "t1.img")).unwrap();
    let t = &change.targets_changed[0];
    assert!(t.access_changed, "the alias came with the change");
    assert_eq!(t.new.alias.as_deref(), Some("by hand"));
    let text = fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("alias = \"by hand\"") && text.contains("t1.img"),
        "{text}"
    );
    assert!(store.reload().unwrap().is_empty());
    // A file that no longer declares the target: the change is refused, nothing written.
    fs::write(&file, target_text("renamed")).unwrap();
    let e = store.remove_lun(&name("t"), 1).err().unwrap();
    assert!(e.to_string().contains("no longer declares target"), "{e}");
    assert_eq!(fs::read_to_string(&file).unwrap(), target_text("renamed"));
}

#[test]
fn adding_needs_an_include_directory() {
    let f = Fixture::with_server("", &target_text("m"));
    let mut store = f.store();
    let before = f.snapshot();
    let e = store.add_target(&target_spec("x")).err().unwrap();
    assert!(
        e.to_string().contains("[server] has no include directory"),
        "{e}"
    );
    assert_eq!(f.snapshot(), before);
    // Targets of the main file can still be changed.
    store.add_lun(&name("m"), &lun_spec(1, "m1.img")).unwrap();
}

#[test]
fn a_stray_file_with_the_new_targets_name_is_not_overwritten() {
    let f = Fixture::new("");
    let stray = f.included(&format!("{}.toml", name("x")), "# not loaded yet\n");
    let mut store = f.store();
    let e = store.add_target(&target_spec("x")).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert_eq!(fs::read_to_string(stray).unwrap(), "# not loaded yet\n");
}

#[test]
fn the_embedded_default_saves_added_targets_but_keeps_its_own() {
    let mut store = Store::embedded().unwrap();
    assert_eq!(
        store.config().include,
        Some(PathBuf::from("keel-data/targets.d"))
    );
    assert_eq!(store.main_file(), None);
    let default = store.config().targets[0].name.clone();
    let e = store.remove_target(&default).err().unwrap();
    assert!(e.to_string().contains("embedded default"), "{e}");
    assert_eq!(store.config().targets.len(), 1);
}

#[test]
fn reload_reports_the_difference_and_a_broken_file_changes_nothing() {
    let f = Fixture::new(&target_text("m"));
    let file = f.included("a.toml", &target_text("a"));
    let mut store = f.store();
    f.included("b.toml", &target_text("b"));
    fs::remove_file(&file).unwrap();
    let change = store.reload().unwrap();
    assert_eq!(change.targets_removed, [name("a")]);
    assert_eq!(change.targets_added.len(), 1);
    assert_eq!(
        store.origin(&name("b")),
        Some(&Origin::Included(f.include().join("b.toml")))
    );
    let config = store.config().clone();
    f.included("c.toml", "[[target]]\nname = 7\n");
    let e = store.reload().err().unwrap();
    assert!(e.to_string().contains("c.toml:2:"), "{e}");
    assert_eq!(*store.config(), config);
}

#[test]
fn a_reload_with_another_data_dir_is_refused_and_changes_nothing() {
    let f = Fixture::new(&target_text("m"));
    let mut store = f.store();
    let config = store.config().clone();
    let text = fs::read_to_string(f.main()).unwrap();
    let moved = text.replace(
        &f.dir.path().join("data").display().to_string(),
        &f.dir.path().join("data2").display().to_string(),
    );
    fs::write(f.main(), moved + &target_text("n")).unwrap();
    let e = store.reload().err().unwrap();
    assert!(
        e.to_string()
            .contains("data_dir changes need a restart; nothing changed"),
        "{e}"
    );
    assert_eq!(*store.config(), config);
}

/// A change reads and writes the one file it edits, however many targets there are.
#[test]
fn a_change_costs_the_same_with_300_targets() {
    let f = Fixture::new("");
    let mut store = f.store();
    let mut per_add = Vec::new();
    for i in 0..300 {
        let before = store.counts();
        store.add_target(&target_spec(&format!("t{i}"))).unwrap();
        let after = store.counts();
        per_add.push((
            after.reads - before.reads,
            after.writes - before.writes,
            after.listings - before.listings,
        ));
    }
    assert!(per_add.iter().all(|&c| c == (0, 1, 0)), "{per_add:?}");
    assert_eq!(store.config().targets.len(), 300);
    assert_eq!(fs::read_dir(f.include()).unwrap().count(), 300);

    let before = store.counts();
    assert!(store.reload().unwrap().is_empty());
    let after = store.counts();
    assert_eq!(
        (after.reads - before.reads, after.listings - before.listings),
        (301, 1)
    );

    for i in (0..300).step_by(7) {
        let before = store.counts();
        store
            .resize_lun(&name(&format!("t{i}")), 0, 2 << 20)
            .unwrap();
        let after = store.counts();
        assert_eq!(
            (after.reads - before.reads, after.writes - before.writes),
            (1, 1)
        );
    }
    for i in 0..300 {
        let before = store.counts();
        store.remove_target(&name(&format!("t{i}"))).unwrap();
        let after = store.counts();
        assert_eq!(
            (
                after.reads - before.reads,
                after.removals - before.removals,
                after.writes - before.writes,
                after.listings - before.listings
            ),
            (1, 1, 0, 0)
        );
        // The index follows the targets as they move.
        for (position, t) in store.config().targets.iter().enumerate() {
            assert_eq!(store.slots[&key(&t.name)].position, position);
        }
    }
    assert!(store.config().targets.is_empty());
    assert_eq!(fs::read_dir(f.include()).unwrap().count(), 0);
    assert!(store.reload().unwrap().is_empty());
}
