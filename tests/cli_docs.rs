//! `keel generate`, which the package build runs: man pages and completions come from the CLI
//! definition itself, so a subcommand added to it is documented without further work.

use std::process::Command;

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap()
}

/// The visible subcommands, as `keel --help` lists them.
fn subcommands() -> Vec<String> {
    let help = String::from_utf8(keel(&["--help"]).stdout).unwrap();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn a_man_page_for_keel_and_each_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = keel(&["generate", "man", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let subcommands = subcommands();
    assert!(subcommands.iter().any(|s| s == "serve"), "{subcommands:?}");
    let main = std::fs::read_to_string(dir.path().join("keel.8")).unwrap();
    assert!(main.starts_with(".ie"), "roff: {main}");
    assert!(main.contains(".TH keel 8"), "{main}");
    for sub in &subcommands {
        let page = std::fs::read_to_string(dir.path().join(format!("keel-{sub}.8")))
            .unwrap_or_else(|e| panic!("keel-{sub}.8: {e}"));
        assert!(page.contains(&format!(".TH keel-{sub} 8")), "{page}");
        assert!(
            main.contains(&format!("keel\\-{sub}(8)")),
            "keel.8 lists {sub}: {main}"
        );
    }
    // Nested subcommands get pages of their own (keel-a-b.8); none for `help` or for the
    // hidden packaging tool.
    for page in std::fs::read_dir(dir.path()).unwrap() {
        let name = page.unwrap().file_name().into_string().unwrap();
        assert!(name == "keel.8" || name.starts_with("keel-"), "{name}");
        assert!(name.ends_with(".8"), "{name}");
        assert!(
            !name.contains("help") && !name.contains("generate"),
            "{name}"
        );
    }
}

#[test]
fn completions_for_the_packaged_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let out = keel(&["generate", "completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in subcommands() {
            assert!(script.contains(&sub), "{shell} completes {sub}");
        }
        assert!(
            !script.contains("generate"),
            "{shell}: the packaging tool stays hidden"
        );
    }
}

#[test]
fn an_unknown_shell_is_refused() {
    let out = keel(&["generate", "completions", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
}
