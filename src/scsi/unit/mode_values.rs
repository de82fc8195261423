//! The mode parameter values a logical unit holds (SPC-4 §7.5): what MODE SELECT changes and
//! MODE SENSE reports. The pages themselves are built in `commands/mode.rs`.

/// The mode parameters MODE SELECT can change. Shared by every I_T nexus (SPC-4 §7.5.1), not
/// saved (no PS bit), back to [`ModeValues::DEFAULT`] on a logical unit reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeValues {
    /// Caching page WCE: writes may complete from a volatile cache (the page cache).
    pub wce: bool,
    /// Control page D_SENSE: CHECK CONDITION carries descriptor-format sense.
    pub d_sense: bool,
    /// Control page SWP: software write protect, the medium refuses writes.
    pub swp: bool,
}

impl ModeValues {
    pub const DEFAULT: ModeValues = ModeValues {
        wce: true,
        d_sense: false,
        swp: false,
    };
}
