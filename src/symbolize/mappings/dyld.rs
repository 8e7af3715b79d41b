//! Mappings from dyld's list of loaded images (Apple's systems).

use super::MappingInfo;

/// The `__TEXT` segment of every image dyld has loaded, the main executable's first, with its `LC_UUID` as
/// the build ID (32 lowercase hex digits), read from the images' headers in memory as dyld lists them.
///
/// dyld's image list takes no lock against a concurrent `dlclose`: an image unloaded while its header is
/// read would be read after it is unmapped. The `backtrace` crate's symbolizer reads the list the same way;
/// images with Objective-C or Swift metadata, and the system's, are never unloaded.
pub(crate) fn read() -> Vec<MappingInfo> {
    // dyld's image list (`<mach-o/dyld.h>`).
    unsafe extern "C" {
        fn _dyld_image_count() -> u32;
        fn _dyld_get_image_header(image_index: u32) -> *const libc::c_void;
        fn _dyld_get_image_vmaddr_slide(image_index: u32) -> isize;
        fn _dyld_get_image_name(image_index: u32) -> *const libc::c_char;
    }

    // SAFETY: reads a count that dyld keeps.
    let count = unsafe { _dyld_image_count() };
    let mut mappings: Vec<MappingInfo> = (0..count)
        .filter_map(|index| {
            // SAFETY: `index` is below the count; dyld returns null for an index no longer in use.
            let (header, slide, name) = unsafe {
                (
                    _dyld_get_image_header(index),
                    _dyld_get_image_vmaddr_slide(index),
                    _dyld_get_image_name(index),
                )
            };
            if header.is_null() || name.is_null() {
                return None;
            }
            // SAFETY: dyld's `name` is a NUL-terminated path that lives as long as the image.
            let path = unsafe { std::ffi::CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: `header` is the mach header of a loaded image, followed in memory by its load
            // commands (both in its mapped `__TEXT` segment); see the function's note on `dlclose`.
            unsafe { image_mapping(header.cast(), slide, path) }
        })
        .collect();
    // Stable: the main executable first, the rest in dyld's order.
    mappings.sort_by_key(|m| !m.is_main);
    mappings
}

/// The mapping of the image whose mach header is at `header`, loaded `slide` bytes from its link address.
///
/// # Safety
/// `header` points to a loaded image's mach header followed by its load commands, mapped while this runs.
unsafe fn image_mapping(header: *const u8, slide: isize, path: String) -> Option<MappingInfo> {
    use object::NativeEndian;
    use object::macho::{MH_EXECUTE, MachHeader64};
    use object::read::macho::{LoadCommandVariant, MachHeader, Segment};

    let size = size_of::<MachHeader64<NativeEndian>>();
    // SAFETY: the header's fixed part is mapped (this function's contract); read unaligned, as a byte
    // slice, to learn how many bytes of load commands follow.
    let fixed = unsafe { std::slice::from_raw_parts(header, size) };
    // A header of the other byte order (none is loaded on Apple's systems) is refused here.
    let endian = MachHeader64::<NativeEndian>::parse(fixed, 0)
        .ok()?
        .endian()
        .ok()?;
    let parsed = MachHeader64::<NativeEndian>::parse(fixed, 0).ok()?;
    let commands_size = usize::try_from(parsed.sizeofcmds.get(endian)).ok()?;
    // SAFETY: the load commands follow the header in the same mapping (this function's contract).
    let data = unsafe { std::slice::from_raw_parts(header, size.checked_add(commands_size)?) };
    let parsed = MachHeader64::<NativeEndian>::parse(data, 0).ok()?;
    let mut commands = parsed.load_commands(endian, data, 0).ok()?;
    let (mut text, mut uuid) = (None, None);
    while let Ok(Some(command)) = commands.next() {
        match command.variant() {
            Ok(LoadCommandVariant::Segment64(segment, _)) if segment.name() == b"__TEXT" => {
                text = Some((
                    segment.vmaddr.get(endian),
                    segment.vmsize.get(endian),
                    segment.fileoff.get(endian),
                ));
            }
            Ok(LoadCommandVariant::Uuid(command)) => uuid = Some(command.uuid),
            _ => {}
        }
    }
    let (vmaddr, vmsize, fileoff) = text?;
    let start = vmaddr.wrapping_add_signed(i64::try_from(slide).ok()?);
    Some(MappingInfo {
        start,
        limit: start.checked_add(vmsize)?,
        file_offset: fileoff,
        is_main: parsed.filetype.get(endian) == MH_EXECUTE,
        path,
        build_id: uuid
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default(),
        vaddr_minus_offset: vmaddr.wrapping_sub(fileoff),
        has_functions: false,
        has_filenames: false,
        has_line_numbers: false,
    })
}
