//! Mode parameters (SPC-4 §7.5, SBC-3 §6.4): MODE SENSE(6)/(10) and MODE SELECT(6)/(10).
//!
//! The pages are a table ([`PAGES`]): each row builds its page from the logical unit's
//! [`ModeValues`], names which bits MODE SELECT may change, and reads those bits back. MODE
//! SENSE's four page controls and MODE SELECT's validation all come from the same rows, so a
//! page cannot report one changeable mask and accept another.
//!
//! Everything here is pure except the two handlers at the end.

use bytes::Bytes;

use super::spc::truncate;
use crate::scsi::Nexus;
use crate::scsi::cdb::{self, ModeSenseCdb, PageControl};
use crate::scsi::opcodes::op;
use crate::scsi::sense::{Sense, SenseKey};
use crate::scsi::unit::lu::LogicalUnit;
use crate::scsi::unit::mode_values::ModeValues;

/// What MODE SENSE reports about a logical unit besides its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeParams {
    /// Device-specific parameter WP (configured read-only, read-only backend, or SWP).
    pub read_only: bool,
    pub values: ModeValues,
    pub block_size: u32,
    /// Capacity in blocks (0 while not ready).
    pub blocks: u64,
}

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0A;
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const PAGE_ALL: u8 = 0x3F;
const SUBPAGE_ALL: u8 = 0xFF;

/// One mode page (page_0 format: no subpages here).
struct PageDef {
    code: u8,
    /// Total page length in bytes, header included (PAGE LENGTH field + 2).
    len: usize,
    /// The page with `values` filled in.
    build: fn(&ModeValues) -> Vec<u8>,
    /// The changeable-values mask: bits set where MODE SELECT may change the page.
    changeable: fn() -> Vec<u8>,
    /// Reads the changeable bits of a (validated) page into `values`.
    apply: fn(&[u8], &mut ModeValues),
}

/// A page of `len` bytes with its page code and PAGE LENGTH filled in.
fn page_header(code: u8, len: usize) -> Vec<u8> {
    let mut page = vec![0u8; len];
    page[0] = code;
    page[1] = (len - 2) as u8;
    page
}

const CACHING_LEN: usize = 20;
const CACHING_WCE: (usize, u8) = (2, 0x04);

/// Caching mode page (SBC-3 §6.4.5). WCE: writes complete into the page cache and need
/// SYNCHRONIZE CACHE or FUA to be durable; with WCE clear every write is forced to the medium.
/// RCD = 0: reads may come from the cache.
fn caching_page(values: &ModeValues) -> Vec<u8> {
    let mut page = page_header(PAGE_CACHING, CACHING_LEN);
    if values.wce {
        page[CACHING_WCE.0] |= CACHING_WCE.1;
    }
    page
}

fn caching_changeable() -> Vec<u8> {
    let mut page = page_header(PAGE_CACHING, CACHING_LEN);
    page[CACHING_WCE.0] = CACHING_WCE.1;
    page
}

fn caching_apply(page: &[u8], values: &mut ModeValues) {
    values.wce = page[CACHING_WCE.0] & CACHING_WCE.1 != 0;
}

const CONTROL_LEN: usize = 12;
const CONTROL_D_SENSE: (usize, u8) = (2, 0x04);
const CONTROL_SWP: (usize, u8) = (4, 0x08);

/// Control mode page (SPC-4 §7.5.8). GLTSD: no log parameters are saved. QUEUE ALGORITHM
/// MODIFIER 1: unrestricted reordering of SIMPLE commands, which the I/O path does. QERR 00b:
/// other commands continue after a CHECK CONDITION. UA_INTLCK_CTRL 00b: reporting a unit
/// attention clears it. SWP and D_SENSE per the logical unit. TAS 1: commands aborted by
/// another nexus's task management complete with TASK ABORTED.
fn control_page(values: &ModeValues) -> Vec<u8> {
    let mut page = page_header(PAGE_CONTROL, CONTROL_LEN);
    page[2] = 0x02; // GLTSD
    if values.d_sense {
        page[CONTROL_D_SENSE.0] |= CONTROL_D_SENSE.1;
    }
    page[3] = 0x10; // QUEUE ALGORITHM MODIFIER = 1, QERR = 00b
    if values.swp {
        page[CONTROL_SWP.0] |= CONTROL_SWP.1;
    }
    page[5] = 0x40; // TAS
    page
}

fn control_changeable() -> Vec<u8> {
    let mut page = page_header(PAGE_CONTROL, CONTROL_LEN);
    page[CONTROL_D_SENSE.0] = CONTROL_D_SENSE.1;
    page[CONTROL_SWP.0] = CONTROL_SWP.1;
    page
}

fn control_apply(page: &[u8], values: &mut ModeValues) {
    values.d_sense = page[CONTROL_D_SENSE.0] & CONTROL_D_SENSE.1 != 0;
    values.swp = page[CONTROL_SWP.0] & CONTROL_SWP.1 != 0;
}

const IE_LEN: usize = 12;

/// Informational exceptions control mode page (SPC-4 §7.5.11): DEXCPT = 1, nothing to
/// report, nothing changeable.
fn informational_exceptions_page(_: &ModeValues) -> Vec<u8> {
    let mut page = page_header(PAGE_INFORMATIONAL_EXCEPTIONS, IE_LEN);
    page[2] = 0x08; // DEXCPT
    page
}

fn informational_exceptions_changeable() -> Vec<u8> {
    page_header(PAGE_INFORMATIONAL_EXCEPTIONS, IE_LEN)
}

fn apply_nothing(_: &[u8], _: &mut ModeValues) {}

/// The mode pages, ascending by page code (the order "all pages" returns them in).
static PAGES: [PageDef; 3] = [
    PageDef {
        code: PAGE_CACHING,
        len: CACHING_LEN,
        build: caching_page,
        changeable: caching_changeable,
        apply: caching_apply,
    },
    PageDef {
        code: PAGE_CONTROL,
        len: CONTROL_LEN,
        build: control_page,
        changeable: control_changeable,
        apply: control_apply,
    },
    PageDef {
        code: PAGE_INFORMATIONAL_EXCEPTIONS,
        len: IE_LEN,
        build: informational_exceptions_page,
        changeable: informational_exceptions_changeable,
        apply: apply_nothing,
    },
];

fn page_def(code: u8) -> Option<&'static PageDef> {
    PAGES.iter().find(|p| p.code == code)
}

/// One page as a page control asks for it (`Saved` is refused before this).
fn render(page: &PageDef, pc: PageControl, values: &ModeValues) -> Vec<u8> {
    match pc {
        PageControl::Changeable => (page.changeable)(),
        PageControl::Default => (page.build)(&ModeValues::DEFAULT),
        PageControl::Current | PageControl::Saved => (page.build)(values),
    }
}

/// The mode pages a CDB selects, in ascending page order. None of the pages has subpages, so
/// subpage FFh ("all subpages") returns the page 0 format page and any other non-zero
/// subpage is invalid.
fn mode_pages(cdb: &ModeSenseCdb, values: &ModeValues) -> Result<Vec<u8>, Sense> {
    if cdb.subpage_code != 0 && cdb.subpage_code != SUBPAGE_ALL {
        return Err(Sense::invalid_field_in_cdb(3, Some(7)));
    }
    let pages: Vec<u8> = PAGES
        .iter()
        .filter(|p| cdb.page_code == PAGE_ALL || cdb.page_code == p.code)
        .flat_map(|p| render(p, cdb.page_control, values))
        .collect();
    if pages.is_empty() {
        return Err(Sense::invalid_field_in_cdb(2, Some(5)));
    }
    Ok(pages)
}

/// Block descriptor (SBC-3 §6.4.2): short (8 bytes, block count saturating at FFFFFFFFh) or
/// long LBA (16 bytes).
fn block_descriptor(params: &ModeParams, long: bool) -> Vec<u8> {
    if long {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&params.blocks.to_be_bytes());
        d[12..16].copy_from_slice(&params.block_size.to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let blocks = u32::try_from(params.blocks).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&blocks.to_be_bytes());
        // LOGICAL BLOCK LENGTH is 24 bits; block sizes are at most 64 KiB.
        d[5..8].copy_from_slice(&params.block_size.to_be_bytes()[1..]);
        d
    }
}

/// Complete MODE SENSE(6)/(10) parameter data (SPC-4 §7.5.4/§7.5.5), before truncation.
pub fn mode_sense_data(cdb: &ModeSenseCdb, params: &ModeParams) -> Result<Vec<u8>, Sense> {
    if cdb.page_control == PageControl::Saved {
        return Err(Sense::saving_parameters_not_supported(2, Some(7)));
    }
    let pages = mode_pages(cdb, &params.values)?;
    let descriptor = if cdb.dbd {
        Vec::new()
    } else {
        block_descriptor(params, cdb.llbaa)
    };
    // SBC-3 §6.4.1 device-specific parameter: WP, DPOFUA (DPO and FUA are honoured).
    let write_protect = if params.read_only { 0x80 } else { 0x00 };
    let device_specific = write_protect | 0x10;
    let mut data = Vec::with_capacity(8 + descriptor.len() + pages.len());
    if cdb.ten {
        data.extend_from_slice(&[0, 0, 0, device_specific]);
        data.push(u8::from(cdb.llbaa && !cdb.dbd)); // LONGLBA
        data.push(0);
        data.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
        data.extend(descriptor);
        data.extend(pages);
        // MODE DATA LENGTH excludes itself (2 bytes); small fixed pages keep it in range.
        let len = u16::try_from(data.len() - 2).unwrap_or(u16::MAX);
        data[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        data.extend_from_slice(&[0, 0, device_specific, descriptor.len() as u8]);
        data.extend(descriptor);
        data.extend(pages);
        data[0] = u8::try_from(data.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(data)
}

fn params_of(lu: &LogicalUnit) -> ModeParams {
    ModeParams {
        read_only: lu.is_read_only(),
        values: lu.mode_values(),
        block_size: lu.block_size(),
        blocks: if lu.not_ready_sense().is_some() {
            0
        } else {
            lu.capacity_blocks()
        },
    }
}

/// MODE SENSE(6)/(10) for a logical unit.
pub fn mode_sense(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let cdb = cdb::decode_mode_sense(raw_cdb)?;
    let data = mode_sense_data(&cdb, &params_of(lu))?;
    Ok(truncate(data, usize::from(cdb.alloc_len)))
}

// ---------------------------------------------------------------------------------------------
// MODE SELECT

/// 06/2A/01 MODE PARAMETERS CHANGED.
pub const fn mode_parameters_changed() -> Sense {
    Sense::new(SenseKey::UnitAttention, 0x2A, 0x01)
}

/// MODE SELECT(6)/(10) (SPC-4 §6.9, §6.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSelectCdb {
    pub ten: bool,
    /// Page format: the list after the block descriptors is mode pages (SPC-4 format).
    pub pf: bool,
    /// Save pages.
    pub sp: bool,
    pub param_len: u16,
}

pub fn decode_mode_select(raw: &[u8]) -> Result<ModeSelectCdb, Sense> {
    let ten = match raw.first().copied() {
        Some(op::MODE_SELECT_6) => false,
        Some(op::MODE_SELECT_10) => true,
        _ => return Err(Sense::invalid_opcode()),
    };
    cdb::require_len(raw, if ten { 10 } else { 6 })?;
    let flags = raw[1];
    let param_len = if ten {
        u16::from_be_bytes([raw[7], raw[8]])
    } else {
        u16::from(raw[4])
    };
    Ok(ModeSelectCdb {
        ten,
        pf: flags & 0x10 != 0,
        sp: flags & 0x01 != 0,
        param_len,
    })
}

/// Write data MODE SELECT needs, for the transport's residual accounting; `None` for other
/// commands.
pub fn data_out_needed(raw: &[u8]) -> Option<u32> {
    match raw.first().copied() {
        Some(op::MODE_SELECT_6 | op::MODE_SELECT_10) => {
            decode_mode_select(raw).ok().map(|c| u32::from(c.param_len))
        }
        _ => None,
    }
}

/// What the parameter list must agree with besides the pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub blocks: u64,
}

/// Validates a MODE SELECT parameter list against `current` and returns the values it sets
/// (SPC-4 §6.9, §7.5.4-§7.5.7). Nothing is applied unless the whole list is valid.
///
/// - SP = 1: this unit keeps no saved pages; SPC-4 §6.9 ends the command with INVALID FIELD IN
///   CDB.
/// - A header, block descriptor or page running past the parameter list: PARAMETER LIST
///   LENGTH ERROR.
/// - MEDIUM TYPE non-zero, a block descriptor asking for another block size or capacity, an
///   unknown page, a subpage-format page, a wrong PAGE LENGTH, or a change to a bit the
///   changeable mask does not allow: INVALID FIELD IN PARAMETER LIST pointing at it.
/// - Pages with PF = 0 (vendor-specific format): INVALID FIELD IN CDB at PF.
///
/// The PS bit is reserved in MODE SELECT; it is ignored so that initiators can send back what
/// MODE SENSE returned.
pub fn mode_select_values(
    cdb: &ModeSelectCdb,
    list: &[u8],
    current: &ModeValues,
    geometry: &Geometry,
) -> Result<ModeValues, Sense> {
    if cdb.sp {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    let len = usize::from(cdb.param_len);
    if len == 0 {
        // SPC-4 §6.9: no data, not an error.
        return Ok(*current);
    }
    let list = list
        .get(..len)
        .ok_or_else(Sense::parameter_list_length_error)?;
    let header_len = if cdb.ten { 8 } else { 4 };
    if list.len() < header_len {
        return Err(Sense::parameter_list_length_error());
    }
    let (medium_type_at, bd_len, long_lba) = if cdb.ten {
        (
            2,
            usize::from(u16::from_be_bytes([list[6], list[7]])),
            list[4] & 0x01 != 0,
        )
    } else {
        (1, usize::from(list[3]), false)
    };
    if list[medium_type_at] != 0 {
        return Err(Sense::invalid_field_in_parameter_list(
            medium_type_at,
            Some(7),
        ));
    }
    let bd_len_at = if cdb.ten { 6 } else { 3 };
    let descriptor_size = if long_lba { 16 } else { 8 };
    if bd_len != 0 && bd_len != descriptor_size {
        return Err(Sense::invalid_field_in_parameter_list(bd_len_at, Some(7)));
    }
    let pages_at = header_len + bd_len;
    if list.len() < pages_at {
        return Err(Sense::parameter_list_length_error());
    }
    if bd_len != 0 {
        check_block_descriptor(&list[header_len..pages_at], header_len, long_lba, geometry)?;
    }
    let mut values = *current;
    let mut at = pages_at;
    if at < list.len() && !cdb.pf {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    while at < list.len() {
        let header = list
            .get(at..at + 2)
            .ok_or_else(Sense::parameter_list_length_error)?;
        if header[0] & 0x40 != 0 {
            // SPF: sub_page format; none of the pages here has subpages.
            return Err(Sense::invalid_field_in_parameter_list(at, Some(6)));
        }
        let page = page_def(header[0] & 0x3F)
            .ok_or_else(|| Sense::invalid_field_in_parameter_list(at, Some(5)))?;
        if usize::from(header[1]) + 2 != page.len {
            return Err(Sense::invalid_field_in_parameter_list(at + 1, Some(7)));
        }
        let sent = list
            .get(at..at + page.len)
            .ok_or_else(Sense::parameter_list_length_error)?;
        let now = (page.build)(&values);
        let mask = (page.changeable)();
        for (i, ((&s, &n), &m)) in sent.iter().zip(&now).zip(&mask).enumerate().skip(2) {
            let wrong = (s ^ n) & !m;
            if wrong != 0 {
                let bit = 7 - wrong.leading_zeros() as u8;
                return Err(Sense::invalid_field_in_parameter_list(at + i, Some(bit)));
            }
        }
        (page.apply)(sent, &mut values);
        at += page.len;
    }
    Ok(values)
}

/// A block descriptor may restate the unit's geometry but not change it: NUMBER OF LOGICAL
/// BLOCKS zero (no change, SBC-3 §6.4.2) or the current capacity, LOGICAL BLOCK LENGTH the
/// current block size. `base` is the descriptor's offset in the parameter list.
fn check_block_descriptor(
    d: &[u8],
    base: usize,
    long: bool,
    geometry: &Geometry,
) -> Result<(), Sense> {
    let (blocks, block_len, len_at) = if long {
        (
            u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8])),
            u32::from_be_bytes(d[12..16].try_into().unwrap_or([0; 4])),
            12,
        )
    } else {
        (
            u64::from(u32::from_be_bytes(d[0..4].try_into().unwrap_or([0; 4]))),
            u32::from_be_bytes([0, d[5], d[6], d[7]]),
            5,
        )
    };
    let current_blocks = if long {
        geometry.blocks
    } else {
        geometry.blocks.min(u64::from(u32::MAX))
    };
    if blocks != 0 && blocks != current_blocks {
        return Err(Sense::invalid_field_in_parameter_list(base, Some(7)));
    }
    if block_len != geometry.block_size {
        return Err(Sense::invalid_field_in_parameter_list(
            base + len_at,
            Some(7),
        ));
    }
    Ok(())
}

/// MODE SELECT(6)/(10) for a logical unit. A change establishes MODE PARAMETERS CHANGED for
/// every other I_T nexus (SPC-4 §7.5.1: the parameters are shared).
pub fn mode_select(
    lu: &LogicalUnit,
    nexus: &Nexus,
    raw_cdb: &[u8],
    data_out: &[u8],
) -> Result<Bytes, Sense> {
    let cdb = decode_mode_select(raw_cdb)?;
    let geometry = Geometry {
        block_size: lu.block_size(),
        blocks: lu.capacity_blocks(),
    };
    // Read-modify-write under the unit's mode lock, so two MODE SELECTs cannot interleave.
    let _guard = lu.lock_mode();
    let current = lu.mode_values();
    let values = mode_select_values(&cdb, data_out, &current, &geometry)?;
    if values != current {
        lu.set_mode_values(values);
        lu.unit_attentions()
            .establish_all(&mode_parameters_changed(), Some(nexus));
    }
    Ok(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ModeParams {
        ModeParams {
            read_only: false,
            values: ModeValues::DEFAULT,
            block_size: 512,
            blocks: 2048,
        }
    }

    fn ms6(flags: u8, page: u8, subpage: u8) -> ModeSenseCdb {
        cdb::decode_mode_sense(&[op::MODE_SENSE_6, flags, page, subpage, 255, 0]).unwrap()
    }

    fn ms10(flags: u8, page: u8, subpage: u8) -> ModeSenseCdb {
        cdb::decode_mode_sense(&[op::MODE_SENSE_10, flags, page, subpage, 0, 0, 0, 1, 0, 0])
            .unwrap()
    }

    #[test]
    fn mode_sense6_all_pages_with_block_descriptor() {
        let d = mode_sense_data(&ms6(0, 0x3F, 0), &params()).unwrap();
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(&d[0..4], &[(d.len() - 1) as u8, 0, 0x10, 8]);
        assert_eq!(&d[4..12], &[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
        assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]);
        assert_eq!(&d[32..38], &[0x0A, 0x0A, 0x02, 0x10, 0x00, 0x40]);
        assert_eq!(&d[44..47], &[0x1C, 0x0A, 0x08]);
        // Subpage FFh: the same pages.
        assert_eq!(mode_sense_data(&ms6(0, 0x3F, 0xFF), &params()).unwrap(), d);
    }

    #[test]
    fn mode_sense_dbd_read_only_d_sense_and_swp() {
        let p = ModeParams {
            read_only: true,
            values: ModeValues {
                wce: false,
                d_sense: true,
                swp: true,
            },
            ..params()
        };
        let d = mode_sense_data(&ms6(0x08, 0x0A, 0), &p).unwrap();
        assert_eq!(
            &d[..],
            &[
                15, 0, 0x90, 0, 0x0A, 0x0A, 0x06, 0x10, 0x08, 0x40, 0, 0, 0, 0, 0, 0
            ]
        );
        let d = mode_sense_data(&ms6(0x08, 0x08, 0), &p).unwrap();
        assert_eq!(d[6], 0x00, "WCE clear");
        // Default values do not carry the current D_SENSE or SWP.
        let d = mode_sense_data(&ms6(0x08, 0x80 | 0x0A, 0), &p).unwrap();
        assert_eq!((d[6], d[8]), (0x02, 0x00));
    }

    #[test]
    fn mode_sense_changeable_masks() {
        let d = mode_sense_data(&ms6(0x08, 0x40 | 0x3F, 0), &params()).unwrap();
        // Caching: WCE only.
        assert_eq!(&d[4..7], &[0x08, 0x12, 0x04]);
        assert!(d[7..24].iter().all(|&b| b == 0));
        // Control: D_SENSE and SWP.
        assert_eq!(&d[24..30], &[0x0A, 0x0A, 0x04, 0x00, 0x08, 0x00]);
        assert!(d[30..36].iter().all(|&b| b == 0));
        // Informational exceptions: nothing.
        assert_eq!(&d[36..38], &[0x1C, 0x0A]);
        assert!(d[38..].iter().all(|&b| b == 0));
        let err = mode_sense_data(&ms6(0, 0xC0 | 0x08, 0), &params()).unwrap_err();
        assert_eq!((err.asc, err.ascq), (0x39, 0x00));
        assert_eq!(err.field_pointer, Some((true, 2, Some(7))));
    }

    #[test]
    fn mode_sense_bad_page_or_subpage() {
        let err = mode_sense_data(&ms6(0, 0x19, 0), &params()).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 2, Some(5))));
        let err = mode_sense_data(&ms6(0, 0x08, 1), &params()).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 3, Some(7))));
        assert!(mode_sense_data(&ms6(0, 0x08, 0xFF), &params()).is_ok());
    }

    #[test]
    fn mode_sense10_short_and_long_descriptors() {
        let p = ModeParams {
            blocks: 1 << 33,
            ..params()
        };
        let d = mode_sense_data(&ms10(0, 0x1C, 0), &p).unwrap();
        assert_eq!(&d[0..8], &[0, (d.len() - 2) as u8, 0, 0x10, 0, 0, 0, 8]);
        assert_eq!(&d[8..16], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x02, 0x00]);
        assert_eq!(d[16], 0x1C);

        let d = mode_sense_data(&ms10(0x10, 0x1C, 0), &p).unwrap();
        assert_eq!(&d[0..8], &[0, (d.len() - 2) as u8, 0, 0x10, 1, 0, 0, 16]);
        assert_eq!(&d[8..16], &(1u64 << 33).to_be_bytes());
        assert_eq!(&d[20..24], &[0, 0, 2, 0]);

        // DBD wins over LLBAA.
        let d = mode_sense_data(&ms10(0x18, 0x1C, 0), &p).unwrap();
        assert_eq!(&d[4..8], &[0, 0, 0, 0]);
        assert_eq!(d.len(), 8 + 12);
    }

    const GEO: Geometry = Geometry {
        block_size: 512,
        blocks: 2048,
    };

    fn sel6(flags: u8, len: u8) -> ModeSelectCdb {
        decode_mode_select(&[op::MODE_SELECT_6, flags, 0, 0, len, 0]).unwrap()
    }

    /// A MODE SELECT(6) list: header, optional descriptor, pages.
    fn list6(descriptor: Option<[u8; 8]>, pages: &[Vec<u8>]) -> Vec<u8> {
        let mut l = vec![0, 0, 0, if descriptor.is_some() { 8 } else { 0 }];
        if let Some(d) = descriptor {
            l.extend_from_slice(&d);
        }
        for p in pages {
            l.extend_from_slice(p);
        }
        l
    }

    fn select6(list: &[u8]) -> Result<ModeValues, Sense> {
        let cdb = sel6(0x10, list.len() as u8);
        mode_select_values(&cdb, list, &ModeValues::DEFAULT, &GEO)
    }

    #[test]
    fn mode_select_sets_swp_d_sense_and_wce() {
        let mut control = control_page(&ModeValues::DEFAULT);
        control[4] |= 0x08;
        control[2] |= 0x04;
        let mut caching = caching_page(&ModeValues::DEFAULT);
        caching[2] &= !0x04;
        let v = select6(&list6(None, &[caching, control])).unwrap();
        assert_eq!(
            v,
            ModeValues {
                wce: false,
                d_sense: true,
                swp: true
            }
        );
        // PS set (as MODE SENSE might return it) is ignored; restating the geometry is fine.
        let mut control = control_page(&ModeValues::DEFAULT);
        control[0] |= 0x80;
        let descriptor = [0, 0, 0x08, 0, 0, 0, 0x02, 0];
        assert_eq!(
            select6(&list6(Some(descriptor), &[control])).unwrap(),
            ModeValues::DEFAULT
        );
        let zero_blocks = [0, 0, 0, 0, 0, 0, 0x02, 0];
        assert!(select6(&list6(Some(zero_blocks), &[])).is_ok());
    }

    #[test]
    fn mode_select_refuses_unchangeable_fields_with_a_pointer() {
        // TAS (control byte 5 bit 6) is not changeable; the page starts at list byte 4.
        let mut control = control_page(&ModeValues::DEFAULT);
        control[5] = 0;
        let err = select6(&list6(None, &[control])).unwrap_err();
        assert_eq!(
            (err.key, err.asc, err.ascq),
            (SenseKey::IllegalRequest, 0x26, 0)
        );
        assert_eq!(err.field_pointer, Some((false, 9, Some(6))));
        // Informational exceptions: DEXCPT cannot be cleared.
        let mut ie = informational_exceptions_page(&ModeValues::DEFAULT);
        ie[2] = 0;
        let err = select6(&list6(None, &[ie])).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 6, Some(3))));
        // Unknown page, subpage format, wrong length.
        let err = select6(&list6(None, &[vec![0x19, 0x02, 0, 0]])).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 4, Some(5))));
        let mut sub = control_page(&ModeValues::DEFAULT);
        sub[0] |= 0x40;
        let err = select6(&list6(None, &[sub])).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 4, Some(6))));
        let mut short = control_page(&ModeValues::DEFAULT);
        short[1] = 6;
        short.truncate(8);
        let err = select6(&list6(None, &[short])).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 5, Some(7))));
    }

    #[test]
    fn mode_select_header_and_descriptor_checks() {
        // Medium type.
        let err = select6(&[0, 1, 0, 0]).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 1, Some(7))));
        // Block descriptor length neither 0 nor 8.
        let err = select6(&[0, 0, 0, 4, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 3, Some(7))));
        // Another block size, another capacity.
        let err = select6(&list6(Some([0, 0, 0, 0, 0, 0, 0x10, 0]), &[])).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 9, Some(7))));
        let err = select6(&list6(Some([0, 0, 0, 9, 0, 0, 0x02, 0]), &[])).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 4, Some(7))));
        // A page cut short by the parameter list length.
        let control = control_page(&ModeValues::DEFAULT);
        let list = list6(None, &[control]);
        let cdb = sel6(0x10, 10);
        let err = mode_select_values(&cdb, &list, &ModeValues::DEFAULT, &GEO).unwrap_err();
        assert_eq!((err.asc, err.ascq), (0x1A, 0x00));
        // The initiator sent less than the CDB announced.
        let cdb = sel6(0x10, 40);
        let err = mode_select_values(&cdb, &list, &ModeValues::DEFAULT, &GEO).unwrap_err();
        assert_eq!((err.asc, err.ascq), (0x1A, 0x00));
        // Header alone, and an empty list, are fine.
        assert_eq!(select6(&[0, 0, 0, 0]).unwrap(), ModeValues::DEFAULT);
        let cdb = sel6(0x10, 0);
        assert!(mode_select_values(&cdb, &[], &ModeValues::DEFAULT, &GEO).is_ok());
    }

    #[test]
    fn mode_select_cdb_bits() {
        let control = control_page(&ModeValues::DEFAULT);
        let list = list6(None, &[control]);
        // SP = 1: no saved pages.
        let cdb = sel6(0x11, list.len() as u8);
        let err = mode_select_values(&cdb, &list, &ModeValues::DEFAULT, &GEO).unwrap_err();
        assert_eq!(
            (err.asc, err.field_pointer),
            (0x24, Some((true, 1, Some(0))))
        );
        // PF = 0 with pages.
        let cdb = sel6(0x00, list.len() as u8);
        let err = mode_select_values(&cdb, &list, &ModeValues::DEFAULT, &GEO).unwrap_err();
        assert_eq!(
            (err.asc, err.field_pointer),
            (0x24, Some((true, 1, Some(4))))
        );
        assert_eq!(
            data_out_needed(&[op::MODE_SELECT_6, 0x10, 0, 0, 24, 0]),
            Some(24)
        );
        assert_eq!(
            data_out_needed(&[op::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 1, 2, 0]),
            Some(258)
        );
        assert_eq!(data_out_needed(&[op::READ_10]), None);
        assert!(decode_mode_select(&[op::MODE_SELECT_10, 0, 0]).is_err());
    }

    #[test]
    fn mode_select10_with_long_descriptor() {
        let mut list = vec![0, 0, 0, 0, 1, 0, 0, 16];
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&2048u64.to_be_bytes());
        d[12..16].copy_from_slice(&512u32.to_be_bytes());
        list.extend_from_slice(&d);
        let mut control = control_page(&ModeValues::DEFAULT);
        control[4] |= 0x08;
        list.extend(control);
        let cdb = decode_mode_select(&[
            op::MODE_SELECT_10,
            0x10,
            0,
            0,
            0,
            0,
            0,
            0,
            list.len() as u8,
            0,
        ])
        .unwrap();
        let v = mode_select_values(&cdb, &list, &ModeValues::DEFAULT, &GEO).unwrap();
        assert!(v.swp);
        // Medium type lives at byte 2 of the 10-byte header.
        list[2] = 1;
        let err = mode_select_values(&cdb, &list, &ModeValues::DEFAULT, &GEO).unwrap_err();
        assert_eq!(err.field_pointer, Some((false, 2, Some(7))));
    }

    #[test]
    fn every_page_round_trips_through_select() {
        for page in &PAGES {
            let built = (page.build)(&ModeValues::DEFAULT);
            assert_eq!(built.len(), page.len);
            assert_eq!((page.changeable)().len(), page.len);
            let mut v = ModeValues::DEFAULT;
            (page.apply)(&built, &mut v);
            assert_eq!(v, ModeValues::DEFAULT);
        }
    }

    proptest::proptest! {
        #[test]
        fn random_parameter_lists_never_panic(
            ten in proptest::bool::ANY,
            flags in 0u8..=255,
            len in 0u16..600,
            list in proptest::collection::vec(0u8..=255, 0..600),
        ) {
            let raw: Vec<u8> = if ten {
                let [hi, lo] = len.to_be_bytes();
                vec![op::MODE_SELECT_10, flags, 0, 0, 0, 0, 0, hi, lo, 0]
            } else {
                vec![op::MODE_SELECT_6, flags, 0, 0, len as u8, 0]
            };
            let cdb = decode_mode_select(&raw).unwrap();
            let _ = mode_select_values(&cdb, &list, &ModeValues::DEFAULT, &GEO);
        }
    }
}
