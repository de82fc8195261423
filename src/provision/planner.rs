//! Desired and observed volumes in, what to do about them out (sans-IO, pure).
//!
//! [`plan`] compares the volumes the configuration declares, the volumes an operator asked to
//! destroy, and one listing of the pool, and says which volumes to create, adopt, grow or
//! destroy, in an order the server accepts (clones before the snapshots they come from). The
//! rules that keep data safe live here, in one place:
//!
//! - A declared volume that exists is adopted, whoever made it. It is grown when it is smaller
//!   than declared and keel made it; it is never shrunk. A volume keel did not make is served
//!   as it is, whatever its size, with a warning ([`Plan::warnings`]): refusing to serve it
//!   would not protect anything, growing it would change data keel does not own.
//! - Only volumes in `to_destroy` are destroyed, only when they exist and carry this pool's
//!   owner tag, and never while they are declared (declared wins). A missing one is already
//!   done. Everything else in `to_destroy` is refused with a reason.
//! - Clones are found by each volume's `origin`, never by the `clones` property (silently
//!   truncated by ZFS). A volume whose snapshot is the origin of a volume that stays (or of a
//!   declared clone still to be made) is refused, naming the dependents. Only the snapshots of
//!   volumes being destroyed are destroyed, so a golden snapshot outside the set is never
//!   touched.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::backend::Observed;
use super::settings::{OWNER_PROPERTY, VolumeSpec};

/// What to do about one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Declared volumes that do not exist: create (or clone) them, in declaration order.
    pub create: Vec<String>,
    /// Declared volumes that exist and need nothing: ready without a server call.
    pub adopt: Vec<String>,
    /// Declared volumes keel made that are smaller than declared: grow to the size, then ready.
    pub grow: Vec<(String, u64)>,
    /// Snapshots ("VOL@SNAP") of volumes being destroyed that nothing was cloned from: these go
    /// first, in one batch.
    pub destroy_snapshots: Vec<String>,
    /// Volumes to destroy, deepest clones first. Between them, as "VOL@SNAP", the snapshots
    /// that are origins of clones destroyed before them: each comes after its last clone and
    /// before its own volume. [`Plan::destroy_steps`] turns this into backend calls.
    pub destroy: Vec<String>,
    /// Names in `to_destroy` that stay, with the reason (shown to the operator).
    pub refused: Vec<(String, String)>,
    /// Declared volumes served as they are although they differ from the declaration (size,
    /// origin, volblocksize), with what differs.
    pub warnings: Vec<(String, String)>,
}

/// One backend call of a teardown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestroyStep {
    /// `VolumeBackend::destroy_snapshots` ("VOL@SNAP" names).
    Snapshots(Vec<String>),
    /// `VolumeBackend::destroy` (volume names, already in dependency order).
    Volumes(Vec<String>),
}

impl Plan {
    /// True when carrying the plan out needs no server call: everything declared exists at its
    /// size and nothing is left to destroy (refusals and warnings may remain: they are not
    /// work).
    pub fn is_settled(&self) -> bool {
        self.create.is_empty()
            && self.grow.is_empty()
            && self.destroy_snapshots.is_empty()
            && self.destroy.is_empty()
    }

    /// The teardown as backend calls, in order: the plain snapshots in one batch, then each run
    /// of volumes and each run of origin snapshots of [`Plan::destroy`]. A tree of clones of
    /// depth d costs 2d+1 calls at most, whatever its width.
    pub fn destroy_steps(&self) -> Vec<DestroyStep> {
        let mut steps = Vec::new();
        if !self.destroy_snapshots.is_empty() {
            steps.push(DestroyStep::Snapshots(self.destroy_snapshots.clone()));
        }
        for name in &self.destroy {
            let is_snapshot = name.contains('@');
            match steps.last_mut() {
                Some(DestroyStep::Snapshots(run)) if is_snapshot => run.push(name.clone()),
                Some(DestroyStep::Volumes(run)) if !is_snapshot => run.push(name.clone()),
                _ if is_snapshot => steps.push(DestroyStep::Snapshots(vec![name.clone()])),
                _ => steps.push(DestroyStep::Volumes(vec![name.clone()])),
            }
        }
        steps
    }
}

/// The volume a pool-relative snapshot name ("VOL@SNAP") belongs to.
pub fn snapshot_volume(snapshot: &str) -> &str {
    snapshot
        .split_once('@')
        .map_or(snapshot, |(volume, _)| volume)
}

/// Which volumes were cloned from which snapshots of the pool, from `origin` alone.
pub struct Dependencies<'a> {
    /// Pool-relative snapshot -> the volumes whose origin it is.
    clones: HashMap<&'a str, Vec<&'a str>>,
    /// Volume -> its snapshots (pool-relative).
    snapshots: HashMap<&'a str, Vec<&'a str>>,
    /// Volume -> the pool-relative snapshot it was cloned from, when that is in the pool.
    parent: HashMap<&'a str, &'a str>,
    known_snapshots: HashSet<&'a str>,
}

impl<'a> Dependencies<'a> {
    pub fn new(observed: &'a Observed) -> Dependencies<'a> {
        let known_snapshots: HashSet<&str> =
            observed.snapshots.iter().map(String::as_str).collect();
        let mut snapshots: HashMap<&str, Vec<&str>> = HashMap::new();
        for snapshot in &observed.snapshots {
            snapshots
                .entry(snapshot_volume(snapshot))
                .or_default()
                .push(snapshot);
        }
        let mut clones: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut parent = HashMap::new();
        for (name, volume) in &observed.volumes {
            let Some(origin) = volume.origin.as_deref() else {
                continue;
            };
            if let Some(snapshot) = resolve_origin(origin, &known_snapshots) {
                clones.entry(snapshot).or_default().push(name);
                parent.insert(name.as_str(), snapshot);
            }
        }
        Dependencies {
            clones,
            snapshots,
            parent,
            known_snapshots,
        }
    }

    /// The pool-relative snapshot an origin (or a `clone_of`) names, if it is one of this
    /// pool's snapshots.
    pub fn resolve(&self, origin: &str) -> Option<&'a str> {
        resolve_origin(origin, &self.known_snapshots)
    }

    /// The snapshots of `volume`.
    pub fn snapshots_of(&self, volume: &str) -> &[&'a str] {
        self.snapshots.get(volume).map_or(&[], Vec::as_slice)
    }

    /// The volumes cloned from `snapshot`.
    pub fn clones_of(&self, snapshot: &str) -> &[&'a str] {
        self.clones.get(snapshot).map_or(&[], Vec::as_slice)
    }

    /// The existing volumes cloned from any snapshot of `volume`.
    pub fn dependents(&self, volume: &str) -> impl Iterator<Item = &'a str> + '_ {
        self.snapshots_of(volume)
            .iter()
            .flat_map(|snapshot| self.clones_of(snapshot).iter().copied())
    }

    /// The volume whose snapshot `volume` was cloned from, if it is in the pool.
    pub fn parent_volume(&self, volume: &str) -> Option<&'a str> {
        self.parent
            .get(volume)
            .map(|snapshot| snapshot_volume(snapshot))
    }
}

/// Maps an origin as ZFS spells it ("tank/keel/base@s", the full name) or as a files pool
/// spells it ("base@s") to one of the pool's snapshots, which the listing names relative to
/// the pool. The longest pool-relative tail that is a known snapshot wins. A snapshot outside
/// the pool whose tail happens to equal a snapshot of the pool would be taken for it: that can
/// only add a dependency (a refusal or a stricter order), never remove one.
fn resolve_origin<'a>(origin: &str, known: &HashSet<&'a str>) -> Option<&'a str> {
    let mut candidate = origin;
    loop {
        if let Some(found) = known.get(candidate) {
            return Some(found);
        }
        let (_, rest) = candidate.split_once('/')?;
        candidate = rest;
    }
}

/// Compares declared volumes (`desired`, all of one pool) and the volumes asked to be
/// destroyed (`to_destroy`) with one listing of that pool (`observed`); `owner` is the pool's
/// owner tag. See the module documentation for the rules.
pub fn plan(
    desired: &[VolumeSpec],
    to_destroy: &[String],
    observed: &Observed,
    owner: &str,
) -> Plan {
    let mut plan = Plan::default();
    let mut declared: BTreeMap<&str, &VolumeSpec> = BTreeMap::new();
    for spec in desired {
        if declared.contains_key(spec.name.as_str()) {
            continue;
        }
        declared.insert(&spec.name, spec);
        plan_declared(spec, observed, owner, &mut plan);
    }
    if to_destroy.is_empty() {
        // The driver plans each job of a burst alone: without destroys that costs a lookup,
        // not a pass over the whole listing.
        return plan;
    }
    let dependencies = Dependencies::new(observed);

    // Candidates: asked for, not declared, existing, ours.
    let mut destroying: BTreeSet<&str> = BTreeSet::new();
    for name in to_destroy {
        if declared.contains_key(name.as_str()) || destroying.contains(name.as_str()) {
            continue;
        }
        let Some(volume) = observed.volumes.get(name) else {
            continue; // already gone
        };
        match volume.owner.as_deref() {
            Some(tag) if tag == owner => {
                destroying.insert(name);
            }
            Some(tag) => plan.refused.push((
                name.clone(),
                format!("not created by keel ({OWNER_PROPERTY} is {tag:?}), kept"),
            )),
            None => plan.refused.push((
                name.clone(),
                format!("not created by keel (no {OWNER_PROPERTY}), kept"),
            )),
        }
    }

    // Declared clones still to be made need their snapshot.
    let mut pending_clones: HashMap<&str, Vec<&str>> = HashMap::new();
    for spec in declared.values() {
        if observed.volumes.contains_key(&spec.name) {
            continue;
        }
        if let Some(snapshot) = spec
            .clone_of
            .as_deref()
            .and_then(|o| dependencies.resolve(o))
        {
            pending_clones.entry(snapshot).or_default().push(&spec.name);
        }
    }

    // Refuse every candidate something that stays depends on; a refusal can make its parent's
    // clone stay, so the parent is checked again.
    let mut refusals: BTreeMap<&str, String> = BTreeMap::new();
    let mut work: Vec<&str> = destroying.iter().copied().collect();
    while let Some(name) = work.pop() {
        if !destroying.contains(name) {
            continue;
        }
        let kept: Vec<&str> = dependencies
            .snapshots_of(name)
            .iter()
            .flat_map(|snapshot| {
                let clones = dependencies.clones_of(snapshot).iter().copied();
                let pending = pending_clones.get(snapshot).into_iter().flatten().copied();
                clones.chain(pending)
            })
            .filter(|dependent| !destroying.contains(dependent))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if kept.is_empty() {
            continue;
        }
        destroying.remove(name);
        refusals.insert(
            name,
            format!(
                "kept: volumes cloned from its snapshots stay ({})",
                name_list(&kept)
            ),
        );
        if let Some(parent) = dependencies.parent_volume(name) {
            work.push(parent);
        }
    }
    plan.refused.extend(
        refusals
            .into_iter()
            .map(|(name, reason)| (name.to_owned(), reason)),
    );

    // Depth: how many ancestors are destroyed too (the walk is bounded, so a corrupt listing
    // with an origin cycle cannot loop).
    let mut by_depth: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for &name in &destroying {
        let mut depth = 0;
        let mut current = name;
        while let Some(parent) = dependencies.parent_volume(current) {
            if !destroying.contains(parent) || depth > destroying.len() {
                break;
            }
            depth += 1;
            current = parent;
        }
        by_depth.entry(depth).or_default().push(name);
    }
    for (_, volumes) in by_depth.iter().rev() {
        let mut origins = Vec::new();
        for &volume in volumes {
            for &snapshot in dependencies.snapshots_of(volume) {
                if dependencies.clones_of(snapshot).is_empty() {
                    plan.destroy_snapshots.push(snapshot.to_owned());
                } else {
                    origins.push(snapshot.to_owned());
                }
            }
        }
        origins.sort();
        plan.destroy.extend(origins);
        plan.destroy.extend(volumes.iter().map(|v| (*v).to_owned()));
    }
    plan.destroy_snapshots.sort();
    plan
}

/// Create, adopt or grow one declared volume.
fn plan_declared(spec: &VolumeSpec, observed: &Observed, owner: &str, plan: &mut Plan) {
    let Some(volume) = observed.volumes.get(&spec.name) else {
        plan.create.push(spec.name.clone());
        return;
    };
    let ours = volume.owner.as_deref() == Some(owner);
    let mut warn = |text: String| plan.warnings.push((spec.name.clone(), text));
    if volume.size < spec.size && ours {
        plan.grow.push((spec.name.clone(), spec.size));
    } else {
        if volume.size < spec.size {
            warn(format!(
                "smaller than declared ({} < {} bytes) and not created by keel: served as it is, never grown",
                volume.size, spec.size
            ));
        } else if volume.size > spec.size {
            warn(format!(
                "larger than declared ({} > {} bytes): served as it is, never shrunk",
                volume.size, spec.size
            ));
        }
        plan.adopt.push(spec.name.clone());
    }
    if let Some(clone_of) = &spec.clone_of
        && volume.origin.as_deref() != Some(clone_of.as_str())
    {
        let origin = volume.origin.as_deref().unwrap_or("none");
        warn(format!(
            "declared as a clone of {clone_of} but its origin is {origin}: served as it is"
        ));
    }
    if let (Some(declared), Some(actual)) = (spec.volblocksize, volume.volblocksize)
        && declared != actual
    {
        warn(format!(
            "volblocksize is {actual}, declared {declared}: served as it is (it cannot change)"
        ));
    }
}

/// "a, b, c" for a reason, at most ten names and how many more.
fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut text = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::backend::ObservedVolume;
    use crate::provision::settings::OnRemove;

    const OWNER: &str = "keel";

    fn spec(name: &str, size: u64, clone_of: Option<&str>) -> VolumeSpec {
        VolumeSpec {
            pool: "tank".into(),
            name: name.into(),
            size,
            clone_of: clone_of.map(str::to_owned),
            volblocksize: None,
            sparse: true,
            on_remove: OnRemove::Destroy,
            lun_tag: format!("t LUN 0 naa.{name}"),
        }
    }

    /// Builds listings the way the ZFS backend reports them: origins as full names under
    /// "tank/keel/", names and snapshots relative to the pool.
    #[derive(Default)]
    struct World {
        observed: Observed,
    }

    impl World {
        fn volume(mut self, name: &str, owner: Option<&str>, origin: Option<&str>) -> World {
            self.observed.volumes.insert(
                name.into(),
                ObservedVolume {
                    size: 1 << 30,
                    origin: origin.map(str::to_owned),
                    owner: owner.map(str::to_owned),
                    lun_tag: None,
                    volblocksize: Some(16384),
                },
            );
            self
        }
        fn ours(self, name: &str) -> World {
            self.volume(name, Some(OWNER), None)
        }
        fn clone_of(self, name: &str, snapshot: &str) -> World {
            self.volume(name, Some(OWNER), Some(&format!("tank/keel/{snapshot}")))
        }
        fn snapshot(mut self, name: &str) -> World {
            self.observed.snapshots.push(name.into());
            self
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Carries a plan out the way ZFS would, refusing what ZFS refuses (a snapshot with
    /// clones, a volume with snapshots, a create over an existing name), so a wrong order
    /// fails the test.
    fn apply(plan: &Plan, desired: &[VolumeSpec], observed: &Observed) -> Observed {
        let mut after = observed.clone();
        let destroy_snapshot = |after: &mut Observed, snapshot: &str| {
            let full = format!("tank/keel/{snapshot}");
            let has_clones = after.volumes.values().any(|v| {
                v.origin.as_deref() == Some(full.as_str()) || v.origin.as_deref() == Some(snapshot)
            });
            assert!(
                !has_clones,
                "destroyed snapshot {snapshot} while clones of it exist"
            );
            let before = after.snapshots.len();
            after.snapshots.retain(|s| s != snapshot);
            assert_eq!(before, after.snapshots.len() + 1, "no snapshot {snapshot}");
        };
        for step in plan.destroy_steps() {
            match step {
                DestroyStep::Snapshots(list) => {
                    for snapshot in list {
                        destroy_snapshot(&mut after, &snapshot);
                    }
                }
                DestroyStep::Volumes(list) => {
                    for name in list {
                        assert!(
                            !after.snapshots.iter().any(|s| snapshot_volume(s) == name),
                            "destroyed {name} while it has snapshots"
                        );
                        let volume = after
                            .volumes
                            .remove(&name)
                            .expect("destroyed a missing volume");
                        assert_eq!(
                            volume.owner.as_deref(),
                            Some(OWNER),
                            "destroyed {name}, not ours"
                        );
                    }
                }
            }
        }
        for name in &plan.create {
            let spec = desired.iter().find(|s| &s.name == name).unwrap();
            assert!(!after.volumes.contains_key(name), "created {name} twice");
            after.volumes.insert(
                name.clone(),
                ObservedVolume {
                    size: spec.size,
                    origin: spec.clone_of.clone(),
                    owner: Some(OWNER.into()),
                    lun_tag: Some(spec.lun_tag.clone()),
                    volblocksize: Some(16384),
                },
            );
        }
        for (name, size) in &plan.grow {
            after.volumes.get_mut(name).unwrap().size = *size;
        }
        after
    }

    fn assert_idempotent(
        desired: &[VolumeSpec],
        to_destroy: &[String],
        observed: &Observed,
    ) -> Plan {
        let first = plan(desired, to_destroy, observed, OWNER);
        let after = apply(&first, desired, observed);
        let second = plan(desired, to_destroy, &after, OWNER);
        assert!(second.is_settled(), "plan on the post-state: {second:?}");
        assert_eq!(second.refused, first.refused);
        second
    }

    #[test]
    fn missing_is_created_existing_is_adopted_whoever_made_it() {
        let world = World::default().ours("a").volume("b", None, None);
        let desired = [
            spec("a", 1 << 30, None),
            spec("b", 1 << 30, None),
            spec("c", 1 << 30, Some("tank/golden@v1")),
        ];
        let p = plan(&desired, &[], &world.observed, OWNER);
        assert_eq!(p.create, names(&["c"]));
        assert_eq!(p.adopt, names(&["a", "b"]));
        assert!(p.grow.is_empty() && p.destroy.is_empty() && p.refused.is_empty());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let second = assert_idempotent(&desired, &[], &world.observed);
        assert_eq!(second.adopt, names(&["a", "b", "c"]));
    }

    #[test]
    fn grows_only_its_own_volumes_and_never_shrinks() {
        let world = World::default()
            .ours("mine")
            .volume("theirs", Some("other"), None)
            .ours("big");
        let desired = [
            spec("mine", 2 << 30, None),
            spec("theirs", 2 << 30, None),
            spec("big", 1 << 20, None),
        ];
        let p = plan(&desired, &[], &world.observed, OWNER);
        assert_eq!(p.grow, vec![("mine".to_string(), 2 << 30)]);
        assert_eq!(p.adopt, names(&["theirs", "big"]));
        let warned: Vec<&str> = p.warnings.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(warned, ["theirs", "big"]);
        assert!(p.warnings[0].1.contains("never grown"), "{:?}", p.warnings);
        assert!(p.warnings[1].1.contains("never shrunk"), "{:?}", p.warnings);
        assert_idempotent(&desired, &[], &world.observed);
    }

    #[test]
    fn warns_when_an_adopted_volume_differs_in_origin_or_blocksize() {
        let world = World::default()
            .clone_of("a", "base@old")
            .ours("base")
            .snapshot("base@old");
        let mut declared = spec("a", 1 << 30, Some("tank/keel/base@new"));
        declared.volblocksize = Some(8192);
        let p = plan(&[declared], &[], &world.observed, OWNER);
        assert_eq!(p.adopt, names(&["a"]));
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].1.contains("tank/keel/base@old"));
        assert!(p.warnings[1].1.contains("volblocksize is 16384"));
    }

    #[test]
    fn destroys_only_what_was_asked_exists_and_is_ours() {
        let world = World::default()
            .ours("mine")
            .volume("theirs", Some("someone"), None)
            .volume("untagged", None, None)
            .ours("bystander");
        let to_destroy = names(&["mine", "theirs", "untagged", "gone"]);
        let p = plan(&[], &to_destroy, &world.observed, OWNER);
        assert_eq!(p.destroy, names(&["mine"]));
        assert_eq!(
            p.refused,
            vec![
                (
                    "theirs".to_string(),
                    "not created by keel (keel:owner is \"someone\"), kept".to_string()
                ),
                (
                    "untagged".to_string(),
                    "not created by keel (no keel:owner), kept".to_string()
                ),
            ]
        );
        assert_idempotent(&[], &to_destroy, &world.observed);
    }

    #[test]
    fn declared_wins_over_destroy() {
        let world = World::default().ours("a");
        let p = plan(
            &[spec("a", 1 << 30, None)],
            &names(&["a"]),
            &world.observed,
            OWNER,
        );
        assert!(p.destroy.is_empty() && p.refused.is_empty());
        assert_eq!(p.adopt, names(&["a"]));
    }

    #[test]
    fn clones_of_a_golden_snapshot_go_without_touching_it() {
        let mut world = World::default()
            .ours("golden")
            .snapshot("golden@v1")
            .snapshot("golden@v2");
        let mut to_destroy = Vec::new();
        for i in 0..100 {
            world = world
                .clone_of(&format!("vm{i:03}"), "golden@v1")
                .snapshot(&format!("vm{i:03}@daily"));
            to_destroy.push(format!("vm{i:03}"));
        }
        let p = plan(&[], &to_destroy, &world.observed, OWNER);
        assert_eq!(p.destroy, to_destroy);
        assert_eq!(p.destroy_snapshots.len(), 100);
        assert!(p.destroy_snapshots.iter().all(|s| s.ends_with("@daily")));
        assert_eq!(
            p.destroy_steps().len(),
            2,
            "one call for the snapshots, one for the volumes"
        );
        let after = apply(&p, &[], &world.observed);
        assert_eq!(after.volumes.keys().collect::<Vec<_>>(), ["golden"]);
        assert_eq!(after.snapshots, names(&["golden@v1", "golden@v2"]));
        assert_idempotent(&[], &to_destroy, &world.observed);
    }

    #[test]
    fn a_chain_goes_deepest_first_with_origin_snapshots_between() {
        // a@s -> b, b@t -> c (a clone of a clone), plus plain snapshots.
        let world = World::default()
            .ours("a")
            .snapshot("a@s")
            .snapshot("a@plain")
            .clone_of("b", "a@s")
            .snapshot("b@t")
            .clone_of("c", "b@t")
            .snapshot("c@x");
        let to_destroy = names(&["a", "b", "c"]);
        let p = plan(&[], &to_destroy, &world.observed, OWNER);
        assert_eq!(p.destroy_snapshots, names(&["a@plain", "c@x"]));
        assert_eq!(p.destroy, names(&["c", "b@t", "b", "a@s", "a"]));
        assert_eq!(
            p.destroy_steps(),
            vec![
                DestroyStep::Snapshots(names(&["a@plain", "c@x"])),
                DestroyStep::Volumes(names(&["c"])),
                DestroyStep::Snapshots(names(&["b@t"])),
                DestroyStep::Volumes(names(&["b"])),
                DestroyStep::Snapshots(names(&["a@s"])),
                DestroyStep::Volumes(names(&["a"])),
            ]
        );
        let after = assert_idempotent(&[], &to_destroy, &world.observed);
        assert!(after.refused.is_empty());
    }

    #[test]
    fn a_kept_clone_keeps_its_whole_ancestry() {
        // c stays (not asked), so b (its origin's volume) stays, so a stays.
        let world = World::default()
            .ours("a")
            .snapshot("a@s")
            .clone_of("b", "a@s")
            .snapshot("b@t")
            .clone_of("c", "b@t")
            .ours("d");
        let to_destroy = names(&["a", "b", "d"]);
        let p = plan(&[], &to_destroy, &world.observed, OWNER);
        assert_eq!(p.destroy, names(&["d"]));
        assert!(p.destroy_snapshots.is_empty());
        assert_eq!(p.refused.len(), 2);
        assert_eq!(p.refused[0].0, "a");
        assert!(p.refused[0].1.contains("(b)"), "{:?}", p.refused);
        assert_eq!(p.refused[1].0, "b");
        assert!(p.refused[1].1.contains("(c)"), "{:?}", p.refused);
        assert_idempotent(&[], &to_destroy, &world.observed);
    }

    #[test]
    fn a_declared_clone_still_to_be_made_keeps_its_snapshot() {
        let world = World::default().ours("base").snapshot("base@gold");
        let desired = [spec("new", 1 << 30, Some("tank/keel/base@gold"))];
        let p = plan(&desired, &names(&["base"]), &world.observed, OWNER);
        assert!(p.destroy.is_empty() && p.destroy_snapshots.is_empty());
        assert_eq!(p.create, names(&["new"]));
        assert!(p.refused[0].1.contains("(new)"), "{:?}", p.refused);
    }

    #[test]
    fn a_clone_of_a_kept_volume_is_not_a_dependency_of_anything_destroyed() {
        // "keep" is someone else's; its clone is ours and goes; keep@s stays.
        let world = World::default()
            .volume("keep", None, None)
            .snapshot("keep@s")
            .clone_of("mine", "keep@s");
        let p = plan(&[], &names(&["mine"]), &world.observed, OWNER);
        assert_eq!(p.destroy, names(&["mine"]));
        assert!(p.destroy_snapshots.is_empty());
        let after = apply(&p, &[], &world.observed);
        assert_eq!(after.snapshots, names(&["keep@s"]));
    }

    #[test]
    fn sixty_long_named_clones_are_found_by_origin() {
        let long = "x".repeat(180);
        let base = format!("base-{long}");
        let mut world = World::default()
            .ours(&base)
            .snapshot(&format!("{base}@golden"));
        let mut to_destroy = vec![base.clone()];
        let mut clones = Vec::new();
        for i in 0..60 {
            let name = format!("nested/dir/clone-{i:02}-{long}");
            world = world.clone_of(&name, &format!("{base}@golden"));
            clones.push(name);
        }
        // Keep one: the base must stay and the reason names the kept clone.
        let kept = clones.pop().unwrap();
        to_destroy.extend(clones.iter().cloned());
        let p = plan(&[], &to_destroy, &world.observed, OWNER);
        let mut sorted = clones.clone();
        sorted.sort();
        assert_eq!(p.destroy, sorted);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0, base);
        assert!(p.refused[0].1.contains(&kept));
        assert_idempotent(&[], &to_destroy, &world.observed);

        // With all 60 asked for, the base goes last, after its snapshot.
        to_destroy.push(kept);
        let p = plan(&[], &to_destroy, &world.observed, OWNER);
        assert_eq!(p.destroy.len(), 62);
        assert_eq!(p.destroy[60], format!("{base}@golden"));
        assert_eq!(p.destroy[61], base);
        assert_eq!(p.destroy_steps().len(), 3);
        assert_idempotent(&[], &to_destroy, &world.observed);
    }

    #[test]
    fn a_files_pool_spells_origins_relative() {
        let mut world = World::default().ours("base").snapshot("base@v1");
        world.observed.volumes.insert(
            "vm".into(),
            ObservedVolume {
                size: 1,
                origin: Some("base@v1".into()),
                owner: Some(OWNER.into()),
                ..Default::default()
            },
        );
        let p = plan(&[], &names(&["base"]), &world.observed, OWNER);
        assert!(p.destroy.is_empty());
        assert!(p.refused[0].1.contains("(vm)"));
        let p = plan(&[], &names(&["base", "vm"]), &world.observed, OWNER);
        assert_eq!(p.destroy, names(&["vm", "base@v1", "base"]));
    }

    #[test]
    fn the_longest_in_pool_tail_wins() {
        // Volume "x/y" and volume "y" both have snapshot s: "tank/keel/x/y@s" is x/y's.
        let world = World::default()
            .ours("x/y")
            .snapshot("x/y@s")
            .ours("y")
            .snapshot("y@s")
            .clone_of("c", "x/y@s");
        let p = plan(&[], &names(&["y"]), &world.observed, OWNER);
        assert_eq!(p.destroy, names(&["y"]));
        assert_eq!(p.destroy_snapshots, names(&["y@s"]));
        let p = plan(&[], &names(&["x/y"]), &world.observed, OWNER);
        assert!(p.destroy.is_empty());
        assert!(p.refused[0].1.contains("(c)"));
    }

    #[test]
    fn an_origin_cycle_in_a_corrupt_listing_terminates() {
        let world = World::default()
            .clone_of("a", "b@s")
            .snapshot("a@s")
            .clone_of("b", "a@s")
            .snapshot("b@s");
        let p = plan(&[], &names(&["a", "b"]), &world.observed, OWNER);
        assert_eq!(p.destroy.len(), 4);
    }

    #[test]
    fn repeated_names_count_once() {
        let world = World::default().ours("a");
        let desired = [spec("n", 1, None), spec("n", 2, None)];
        let p = plan(&desired, &names(&["a", "a"]), &world.observed, OWNER);
        assert_eq!(p.create, names(&["n"]));
        assert_eq!(p.destroy, names(&["a"]));
    }

    #[test]
    fn long_reasons_are_bounded() {
        let names_12: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
        let refs: Vec<&str> = names_12.iter().map(String::as_str).collect();
        assert_eq!(
            name_list(&refs),
            "v0, v1, v2, v3, v4, v5, v6, v7, v8, v9 and 2 more"
        );
    }
}
