package vhd

// CHS limits. A geometry of exactly maxGeometry sectors tells readers that
// the footer's current size, not the geometry, is the disk size (QEMU's
// force_size images and any disk larger than ATA CHS can express).
const (
	maxCyls        = 65535
	maxHeads       = 16
	maxSecs        = 255
	maxGeometry    = int64(maxCyls) * maxHeads * maxSecs
	maxSectors     = int64(0xff000000) // 2040 GiB, the largest disk QEMU accepts
	sectorSize     = 512
	timestampEpoch = 946684800 // 2000-01-01T00:00:00Z, the VHD time base
)

// Geometry is a cylinder/head/sector triple as stored in the footer.
type Geometry struct {
	Cyls  uint16
	Heads uint8
	Secs  uint8
}

// Sectors is the disk size the geometry describes.
func (g Geometry) Sectors() int64 { return int64(g.Cyls) * int64(g.Heads) * int64(g.Secs) }

// chsFor is the specification's CHS algorithm (appendix of the VHD
// specification), extended as QEMU does to 255 sectors per track beyond the
// ATA limit. It rounds down: the result may describe fewer sectors than asked.
func chsFor(total int64) Geometry {
	total = min(total, maxGeometry)
	var secs, heads int64
	var cth int64
	if total >= 65535*16*63 {
		secs, heads = 255, 16
		cth = total / secs
	} else {
		secs = 17
		cth = total / secs
		heads = (cth + 1023) / 1024
		if heads < 4 {
			heads = 4
		}
		if cth >= heads*1024 || heads > 16 {
			secs, heads = 31, 16
			cth = total / secs
		}
		if cth >= heads*1024 {
			secs, heads = 63, 16
			cth = total / secs
		}
	}
	return Geometry{Cyls: uint16(min(cth/heads, maxCyls)), Heads: uint8(heads), Secs: uint8(secs)}
}

// roundedGeometry picks the geometry for a new disk of size bytes the way
// qemu-img does, so that both tools agree on the size of what they create:
// the smallest CHS geometry holding at least size (the size is rounded up to
// it), or, when force is set or the disk is beyond CHS, the maximum geometry
// with the exact size kept in the footer. It returns the geometry and the
// resulting disk size in bytes.
func roundedGeometry(size int64, force bool) (Geometry, int64) {
	maxG := Geometry{maxCyls, maxHeads, maxSecs}
	if force {
		return maxG, size
	}
	want := min(maxGeometry, size/sectorSize)
	var g Geometry
	for i := int64(0); want > g.Sectors(); i++ {
		g = chsFor(want + i)
	}
	if g.Sectors() == maxGeometry {
		return g, size / sectorSize * sectorSize
	}
	return g, g.Sectors() * sectorSize
}
