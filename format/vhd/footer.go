package vhd

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Disk types of the footer.
const (
	typeFixed        = 2
	typeDynamic      = 3
	typeDifferencing = 4
)

const (
	footerSize   = 512
	footerCookie = "conectix"
	noOffset     = ^uint64(0) // "no next structure" in footer and header
)

// Footer is the hard disk footer, present at the end of every VHD and, for
// dynamic and differencing disks, copied at offset 0.
type Footer struct {
	Features   uint32
	Version    uint32
	DataOffset uint64 // dynamic header offset, or noOffset for fixed disks
	Timestamp  uint32 // seconds since 2000-01-01 UTC
	CreatorApp [4]byte
	CreatorVer uint32
	CreatorOS  [4]byte
	OrigSize   uint64
	CurSize    uint64
	Geometry   Geometry
	DiskType   uint32
	Checksum   uint32 // as stored
	UniqueID   [16]byte
	SavedState uint8
}

// checksum is the one's complement of the byte sum, skipping the 4-byte
// checksum field at skip.
func checksum(b []byte, skip int) uint32 {
	var s uint32
	for i, c := range b {
		if i >= skip && i < skip+4 {
			continue
		}
		s += uint32(c)
	}
	return ^s
}

// parseFooter decodes and validates a footer. Errors name the field at fault.
func parseFooter(b []byte) (*Footer, error) {
	if len(b) < footerSize {
		return nil, fmt.Errorf("footer: short (%d bytes)", len(b))
	}
	b = b[:footerSize]
	if !bytes.Equal(b[:8], []byte(footerCookie)) {
		return nil, fmt.Errorf("footer: cookie is %q, not %q", b[:8], footerCookie)
	}
	be := binary.BigEndian
	f := &Footer{
		Features:   be.Uint32(b[8:]),
		Version:    be.Uint32(b[12:]),
		DataOffset: be.Uint64(b[16:]),
		Timestamp:  be.Uint32(b[24:]),
		CreatorVer: be.Uint32(b[32:]),
		OrigSize:   be.Uint64(b[40:]),
		CurSize:    be.Uint64(b[48:]),
		Geometry:   Geometry{Cyls: be.Uint16(b[56:]), Heads: b[58], Secs: b[59]},
		DiskType:   be.Uint32(b[60:]),
		Checksum:   be.Uint32(b[64:]),
		SavedState: b[84],
	}
	copy(f.CreatorApp[:], b[28:32])
	copy(f.CreatorOS[:], b[36:40])
	copy(f.UniqueID[:], b[68:84])
	if sum := checksum(b, 64); sum != f.Checksum {
		return nil, fmt.Errorf("footer: checksum is %#08x, computed %#08x", f.Checksum, sum)
	}
	if f.Version>>16 != 1 {
		return nil, fmt.Errorf("footer: file format version %#08x is not 1.x", f.Version)
	}
	switch f.DiskType {
	case typeFixed, typeDynamic, typeDifferencing:
	default:
		return nil, fmt.Errorf("footer: disk type %d is not fixed (2), dynamic (3) or differencing (4)", f.DiskType)
	}
	return f, nil
}

// marshal encodes the footer with a freshly computed checksum. It does not
// modify f, so it is safe while others read the footer.
func (f *Footer) marshal() []byte {
	b := make([]byte, footerSize)
	be := binary.BigEndian
	copy(b, footerCookie)
	be.PutUint32(b[8:], f.Features)
	be.PutUint32(b[12:], f.Version)
	be.PutUint64(b[16:], f.DataOffset)
	be.PutUint32(b[24:], f.Timestamp)
	copy(b[28:], f.CreatorApp[:])
	be.PutUint32(b[32:], f.CreatorVer)
	copy(b[36:], f.CreatorOS[:])
	be.PutUint64(b[40:], f.OrigSize)
	be.PutUint64(b[48:], f.CurSize)
	be.PutUint16(b[56:], f.Geometry.Cyls)
	b[58], b[59] = f.Geometry.Heads, f.Geometry.Secs
	be.PutUint32(b[60:], f.DiskType)
	copy(b[68:], f.UniqueID[:])
	b[84] = f.SavedState
	be.PutUint32(b[64:], checksum(b, 64))
	return b
}

// usesCurrentSize reports whether readers take the disk size from the
// footer's current-size field rather than from the CHS geometry. Virtual PC
// (and old QEMU) size disks by geometry; Hyper-V, Disk2VHD, XenServer,
// XenConverter and QEMU with force_size use the current size; and a maximal
// geometry means the disk is bigger than CHS can say. This is QEMU's rule,
// so that vdisk and qemu-img agree on every image.
func (f *Footer) usesCurrentSize() bool {
	switch string(f.CreatorApp[:]) {
	case "win ", "qem2", "d2v ", "CTXS", "tap\x00":
		return true
	}
	return f.Geometry.Sectors() == maxGeometry
}

// virtualSize is the disk size in bytes by the rule above.
func (f *Footer) virtualSize() (int64, error) {
	sectors := f.Geometry.Sectors()
	if f.usesCurrentSize() {
		if f.CurSize > uint64(maxSectors)*sectorSize {
			return 0, fmt.Errorf("footer: current size %d is larger than 2040 GiB", f.CurSize)
		}
		sectors = int64(f.CurSize / sectorSize)
	}
	if sectors > maxSectors {
		return 0, fmt.Errorf("footer: disk size of %d sectors is larger than 2040 GiB", sectors)
	}
	return sectors * sectorSize, nil
}

func (f *Footer) typeName() string {
	switch f.DiskType {
	case typeFixed:
		return "fixed"
	case typeDynamic:
		return "dynamic"
	case typeDifferencing:
		return "differencing"
	}
	return fmt.Sprint(f.DiskType)
}

// uuidString formats a unique id as the usual 8-4-4-4-12 hex groups.
func uuidString(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// printable renders a four-character code, showing NULs and other bytes safely.
func printable(b []byte) string {
	var s []byte
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			s = append(s, c)
		} else {
			s = append(s, fmt.Sprintf("\\x%02x", c)...)
		}
	}
	return string(s)
}
