//! The embedded eBPF object against what the agent names, without root:
//! every program of the probe table and every call-site uprobe, every map
//! the loader takes or sizes and every global it sets is in the object, as
//! the kind aya is asked to load or take it as; and the object holds
//! nothing else but what is listed here as the kernel side's own or
//! aya-log's. The eBPF crate cannot use `sockerr_common::names` (aya-ebpf's
//! macros and `no_mangle` take an item's own name or a literal), so this is
//! what keeps the two sides' names in step.

use std::collections::{BTreeSet, HashMap};

use aya_obj::{
    Object, ProgramSection,
    generated::bpf_map_type::{self, *},
    programs::{CgroupSockAttachType, CgroupSockoptAttachType},
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionIndex, SymbolKind};
use sockerr_common::{CounterKey, KernelOffsets, RemoteKey, STACK_DEPTH, Tally, TallyKey, names};

use super::{
    OBJECT, UPROBES,
    probes::{Attach, PROBES},
};

/// A map the agent takes: the kernel map types aya accepts for the type it
/// is taken as, and the key and value sizes aya checks then.
struct Taken {
    name: &'static str,
    types: &'static [bpf_map_type],
    sizes: Option<(usize, usize)>,
}

const fn taken(
    name: &'static str,
    types: &'static [bpf_map_type],
    sizes: Option<(usize, usize)>,
) -> Taken {
    Taken { name, types, sizes }
}

/// The maps `Kernel::take_maps` takes, `Kernel::load` sizes and
/// `Kernel::logger` hands to aya-log.
const TAKEN: &[Taken] = &[
    taken(names::FINDINGS, &[BPF_MAP_TYPE_RINGBUF], None),
    taken(
        names::COUNTERS,
        &[BPF_MAP_TYPE_PERCPU_HASH],
        Some((size_of::<CounterKey>(), size_of::<u64>())),
    ),
    taken(
        names::REMOTES,
        &[BPF_MAP_TYPE_PERCPU_HASH],
        Some((size_of::<RemoteKey>(), size_of::<u64>())),
    ),
    taken(
        names::HEALTH,
        &[BPF_MAP_TYPE_PERCPU_ARRAY],
        Some((size_of::<u32>(), size_of::<u64>())),
    ),
    taken(
        names::TALLIES,
        &[BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH],
        Some((size_of::<TallyKey>(), size_of::<Tally>())),
    ),
    taken(
        names::STACKS,
        &[BPF_MAP_TYPE_STACK_TRACE],
        Some((size_of::<u32>(), size_of::<[u64; STACK_DEPTH]>())),
    ),
    taken(
        names::WANT_SITES,
        &[BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH],
        Some((size_of::<u32>(), size_of::<u8>())),
    ),
    taken(
        names::SITES_ON,
        &[BPF_MAP_TYPE_ARRAY],
        Some((size_of::<u32>(), size_of::<u32>())),
    ),
    // Sized at load; --kernel.max-attempts promises LRU eviction.
    taken(names::SOCKETS, &[BPF_MAP_TYPE_LRU_HASH], None),
    // Sized at load (--metrics.max-comms, --metrics.max-remotes); admitting
    // stops when full, so no LRU.
    taken(
        names::COMMS,
        &[BPF_MAP_TYPE_HASH],
        Some((sockerr_common::TASK_COMM_LEN, size_of::<u8>())),
    ),
    taken(
        names::REMOTE_ENDPOINTS,
        &[BPF_MAP_TYPE_HASH],
        Some((size_of::<sockerr_common::Endpoint>(), size_of::<u8>())),
    ),
    taken("AYA_LOGS", &[BPF_MAP_TYPE_RINGBUF], None),
];

/// Maps only the kernel side uses: the agent never opens them.
const KERNEL_MAPS: &[&str] = &["SITES", "PENDING", "SCRATCH", "PATH_SCRATCH"];

/// The globals `Kernel::load` sets, and the size of what it sets each to.
const SET: &[(&str, usize)] = &[
    (names::OFFSETS, size_of::<KernelOffsets>()),
    (names::DETAIL_INTERVAL_NS, size_of::<u64>()),
    (names::BY_CGROUP, size_of::<u8>()),
];

/// Globals left at the value the kernel side gives them.
const KERNEL_GLOBALS: &[&str] = &[names::WAKEUP_BYTES, aya_log::LEVEL];

fn parse() -> Object {
    Object::parse(OBJECT).expect("the embedded object parses")
}

/// Whether aya loads a program of `section` as the kind `attach` needs
/// (`attach_program` converts it to that kind).
fn loads_as(attach: Attach, section: &ProgramSection) -> bool {
    match attach {
        Attach::TpBtf(_) => matches!(section, ProgramSection::BtfTracePoint),
        Attach::FEntry(_) => matches!(section, ProgramSection::FEntry { .. }),
        Attach::FExit(_) => matches!(section, ProgramSection::FExit { .. }),
        Attach::KProbe(_) => matches!(section, ProgramSection::KProbe),
        Attach::CgroupGetsockopt | Attach::CgroupGetsockoptCompat => matches!(
            section,
            ProgramSection::CgroupSockopt {
                attach_type: CgroupSockoptAttachType::Get
            }
        ),
        Attach::CgroupSockRelease => matches!(
            section,
            ProgramSection::CgroupSock {
                attach_type: CgroupSockAttachType::SockRelease
            }
        ),
    }
}

#[test]
fn the_programs_are_the_probe_tables_and_the_call_site_uprobes() {
    let object = parse();
    let elf = object::File::parse(OBJECT).expect("the embedded object is ELF");
    let mut named = BTreeSet::new();
    for probe in PROBES {
        for hook in probe.hooks {
            let program = object.programs.get(hook.program).unwrap_or_else(|| {
                panic!(
                    "probe {}: no program {} in the object",
                    probe.name, hook.program
                )
            });
            assert!(
                loads_as(hook.attach, &program.section),
                "probe {}: program {} is {:?}, not what {} attaches",
                probe.name,
                hook.program,
                program.section,
                hook.attach
            );
            // Where the program's section names a kernel function, it is
            // the one the table attaches it to.
            if let Attach::TpBtf(_) | Attach::FEntry(_) | Attach::FExit(_) = hook.attach {
                let section = elf
                    .section_by_index(SectionIndex(program.section_index))
                    .and_then(|s| s.name())
                    .expect("the program's section");
                assert_eq!(
                    section,
                    hook.attach.to_string(),
                    "probe {}: program {}",
                    probe.name,
                    hook.program
                );
            }
            named.insert(hook.program);
        }
    }
    for name in UPROBES {
        let program = object
            .programs
            .get(name)
            .unwrap_or_else(|| panic!("no call-site uprobe {name} in the object"));
        assert!(
            matches!(program.section, ProgramSection::UProbe { .. }),
            "{name} is {:?}, not a uprobe",
            program.section
        );
        named.insert(name);
    }
    let programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
    assert_eq!(
        programs, named,
        "the object's programs and those the agent loads differ"
    );
}

#[test]
fn the_maps_are_those_the_agent_takes_and_the_kernel_sides_own() {
    let object = parse();
    for Taken { name, types, sizes } in TAKEN {
        let map = object
            .maps
            .get(*name)
            .unwrap_or_else(|| panic!("no map {name} in the object"));
        assert!(
            types.iter().any(|t| *t as u32 == map.map_type()),
            "map {name} is of type {}, not one of {types:?}",
            map.map_type()
        );
        if let Some(sizes) = sizes {
            assert_eq!(
                (map.key_size() as usize, map.value_size() as usize),
                *sizes,
                "map {name}: key and value sizes"
            );
        }
    }
    // The data sections' maps hold the globals, checked one by one below.
    let maps: BTreeSet<&str> = object
        .maps
        .keys()
        .map(String::as_str)
        .filter(|m| !m.starts_with('.'))
        .collect();
    let known: BTreeSet<&str> = TAKEN
        .iter()
        .map(|map| map.name)
        .chain(KERNEL_MAPS.iter().copied())
        .collect();
    assert_eq!(maps, known, "the object's maps and those known here differ");
}

#[test]
fn the_globals_are_those_the_loader_sets_and_the_kernel_sides_own() {
    let mut object = parse();
    // What `EbpfLoader::override_global(name, value, true)` does at load:
    // fails when the global is missing, of another size, or not in a data
    // section.
    let zeros = [0u8; 1024];
    let globals: HashMap<&str, (&[u8], bool)> = SET
        .iter()
        .map(|(name, size)| (*name, (&zeros[..*size], true)))
        .collect();
    if let Err(e) = object.patch_map_data(globals) {
        panic!("setting the loader's globals: {e}");
    }
    let elf = object::File::parse(OBJECT).expect("the embedded object is ELF");
    let data_section = |index| {
        elf.section_by_index(index)
            .and_then(|s| s.name())
            .is_ok_and(|name| {
                [".rodata", ".data", ".bss"]
                    .iter()
                    .any(|d| name == *d || name.starts_with(&format!("{d}.")))
            })
    };
    let in_object: BTreeSet<&str> = elf
        .symbols()
        .filter(|s| s.is_global() && s.kind() == SymbolKind::Data)
        .filter(|s| s.section_index().is_some_and(data_section))
        .filter_map(|s| s.name().ok())
        .collect();
    let known: BTreeSet<&str> = SET
        .iter()
        .map(|(name, _)| *name)
        .chain(KERNEL_GLOBALS.iter().copied())
        .collect();
    assert_eq!(
        in_object, known,
        "the object's globals and those known here differ"
    );
}
