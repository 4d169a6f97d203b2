package block

import (
	"bytes"
	"fmt"
	"io"
)

// CheckRange validates a guest access of n bytes at off against size. It
// is the first thing every driver's ReadAt/WriteAt does, so the arithmetic
// that follows can trust off and n.
func CheckRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: offset %d length %d, image size %d", ErrOutOfRange, off, n, size)
	}
	return nil
}

// MapChain resolves the status of [off, off+n) through img's backing
// chain, as qemu-img map does: ranges a layer leaves undecided are looked
// up in its backing image at the next depth. Extents come back in order and
// cover the range exactly; StatusAllocated marks "present".
func MapChain(img Image, off, n int64) ([]Extent, error) {
	var out []Extent
	end := off + n
	for off < end {
		exts, err := img.BlockStatus(off, end-off)
		if err != nil {
			return nil, err
		}
		if len(exts) == 0 {
			return nil, fmt.Errorf("block status at %d returned nothing", off)
		}
		for _, e := range exts {
			if e.Offset != off || e.Length <= 0 || e.Length > end-off {
				return nil, fmt.Errorf("block status at %d returned an extent at %d+%d", off, e.Offset, e.Length)
			}
			sub, err := resolve(img, e, 0)
			if err != nil {
				return nil, err
			}
			out = appendMerged(out, sub...)
			off += e.Length
		}
	}
	return out, nil
}

// resolve turns one extent of the layer at depth into final extents.
func resolve(img Image, e Extent, depth int) ([]Extent, error) {
	e.Depth = depth
	if e.Status&(StatusData|StatusZero) != 0 {
		e.Status |= StatusAllocated
		return []Extent{e}, nil
	}
	back := img.Backing()
	if back == nil || depth >= MaxBackingDepth {
		// An unallocated range can still have a host offset (qcow2
		// subclusters of an allocated cluster); qemu-img map shows it
		// when no backing layer takes over.
		if e.HostOffset <= 0 || e.File == "" {
			e.HostOffset = -1
			e.File = ""
		}
		e.Status = StatusZero
		return []Extent{e}, nil
	}
	e.HostOffset = -1
	e.File = ""
	var out, tail []Extent
	off, end := e.Offset, e.Offset+e.Length
	if bsize := back.Size(); bsize < end {
		// Beyond the end of a shorter backing file reads as zeros here.
		bsize = max(bsize, off)
		tail = []Extent{{Offset: bsize, Length: end - bsize, Status: StatusZero, HostOffset: -1, Depth: depth}}
		end = bsize
	}
	for off < end {
		exts, err := back.BlockStatus(off, end-off)
		if err != nil {
			return nil, err
		}
		if len(exts) == 0 {
			return nil, fmt.Errorf("block status at %d returned nothing", off)
		}
		for _, b := range exts {
			if b.Offset != off || b.Length <= 0 || b.Length > end-off {
				return nil, fmt.Errorf("block status at %d returned an extent at %d+%d", off, b.Offset, b.Length)
			}
			sub, err := resolve(back, b, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
			off += b.Length
		}
	}
	return append(out, tail...), nil
}

// Mergeable reports whether b continues a, as qemu-img map merges entries.
func Mergeable(a, b Extent) bool {
	if a.Offset+a.Length != b.Offset || a.Status != b.Status || a.Depth != b.Depth || a.File != b.File {
		return false
	}
	if (a.HostOffset < 0) != (b.HostOffset < 0) {
		return false
	}
	return a.HostOffset < 0 || a.HostOffset+a.Length == b.HostOffset
}

func appendMerged(out []Extent, es ...Extent) []Extent {
	for _, e := range es {
		if k := len(out); k > 0 && Mergeable(out[k-1], e) {
			out[k-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	return out
}

// RefineZero splits data extents by the container's own holes, as QEMU
// does when it asks the protocol about a format's host offsets: data
// mapped onto a hole of f reads as zeros, so it gains StatusZero.
func RefineZero(f File, exts []Extent) ([]Extent, error) {
	dm, ok := f.(DataMapper)
	if !ok {
		return exts, nil
	}
	var out []Extent
	for _, e := range exts {
		if e.Status&StatusData == 0 || e.Status&(StatusZero|StatusCompressed) != 0 || e.HostOffset < 0 {
			out = append(out, e)
			continue
		}
		host, err := dm.MapData(e.HostOffset, e.Length)
		if err != nil {
			return nil, err
		}
		covered := int64(0)
		for _, h := range host {
			if covered >= e.Length {
				break
			}
			l := min(h.Length, e.Length-covered)
			sub := e
			sub.Offset, sub.HostOffset, sub.Length = e.Offset+covered, e.HostOffset+covered, l
			if h.Status&StatusZero != 0 {
				sub.Status |= StatusZero
			}
			out = append(out, sub)
			covered += l
		}
		if covered < e.Length {
			sub := e
			sub.Offset, sub.HostOffset, sub.Length = e.Offset+covered, e.HostOffset+covered, e.Length-covered
			out = append(out, sub)
		}
	}
	return out, nil
}

// WriteZeroBytes is the fallback for WriteZeroes: it writes real zero
// bytes in bounded chunks.
func WriteZeroBytes(w io.WriterAt, off, n int64) error {
	const chunk = 1 << 20
	buf := make([]byte, min(n, chunk))
	for n > 0 {
		l := min(n, int64(len(buf)))
		if _, err := w.WriteAt(buf[:l], off); err != nil {
			return err
		}
		off += l
		n -= l
	}
	return nil
}

// zeroPage is compared against with bytes.Equal, whose assembly runs
// many times faster than a Go loop: converting mostly-zero images is
// bound by this scan.
var zeroPage [4096]byte

// IsZero reports whether b holds only zero bytes.
func IsZero(b []byte) bool {
	// A non-zero first byte is the common case for data; fail fast.
	if len(b) > 0 && b[0] != 0 {
		return false
	}
	for len(b) >= len(zeroPage) {
		if !bytes.Equal(b[:len(zeroPage)], zeroPage[:]) {
			return false
		}
		b = b[len(zeroPage):]
	}
	return bytes.Equal(b, zeroPage[:len(b)])
}
