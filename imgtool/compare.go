package imgtool

import (
	"bytes"
	"fmt"
	"io"

	"vdisk/block"
)

// Compare results, as qemu-img compare's exit statuses.
const (
	CompareSame      = 0
	CompareDifferent = 1
	CompareOpenError = 2
	CompareMapError  = 3
	CompareReadError = 4
)

const compareBuf = 2 << 20 // qemu-img's IO_BUF_SIZE

const sector = 512

// Compare compares the content of a and b as qemu-img compare does,
// printing its messages to out, and returns its exit status and, for
// statuses above 1, the error. With strict, images of different sizes or
// with different block status differ; otherwise the part of the larger
// image beyond the smaller one must read as zeros. nameA and nameB name
// the images in error messages.
func Compare(a, b block.Image, nameA, nameB string, strict bool, out io.Writer) (int, error) {
	sizeA, sizeB := a.Size(), b.Size()
	if strict && sizeA != sizeB {
		fmt.Fprintln(out, "Strict mode: Image size mismatch!")
		return CompareDifferent, nil
	}
	common := min(sizeA, sizeB)
	buf1 := make([]byte, compareBuf)
	buf2 := make([]byte, compareBuf)

	// Both maps are walked in step; each step covers the longest range
	// where neither image's status changes.
	var ea, eb []block.Extent
	for off := int64(0); off < common; {
		var err error
		if len(ea) == 0 {
			if ea, err = block.MapChain(a, off, min(common-off, 1<<30)); err != nil {
				return CompareMapError, fmt.Errorf("error while reading block status of %s at offset %d: %w", nameA, off, err)
			}
		}
		if len(eb) == 0 {
			if eb, err = block.MapChain(b, off, min(common-off, 1<<30)); err != nil {
				return CompareMapError, fmt.Errorf("error while reading block status of %s at offset %d: %w", nameB, off, err)
			}
		}
		x, y := ea[0], eb[0]
		chunk := min(x.Offset+x.Length, y.Offset+y.Length) - off
		stA, stB := x.Status&(block.StatusData|block.StatusZero|block.StatusAllocated), y.Status&(block.StatusData|block.StatusZero|block.StatusAllocated)
		if strict && stA != stB {
			fmt.Fprintf(out, "Strict mode: Offset %d block status mismatch!\n", off)
			return CompareDifferent, nil
		}
		allocA, allocB := stA&block.StatusAllocated != 0, stB&block.StatusAllocated != 0
		switch {
		case stA&block.StatusZero != 0 && stB&block.StatusZero != 0:
			// Both read as zeros.
		case allocA == allocB:
			if allocA {
				chunk = min(chunk, compareBuf)
				if code, err := readAt(a, nameA, buf1[:chunk], off); err != nil {
					return code, err
				}
				if code, err := readAt(b, nameB, buf2[:chunk], off); err != nil {
					return code, err
				}
				if pos, diff := compareBuffers(buf1[:chunk], buf2[:chunk]); diff {
					fmt.Fprintf(out, "Content mismatch at offset %d!\n", off+pos)
					return CompareDifferent, nil
				}
			}
		default:
			chunk = min(chunk, compareBuf)
			img, name := a, nameA
			if allocB {
				img, name = b, nameB
			}
			if code, err := checkEmpty(img, name, buf1[:chunk], off, out); code != CompareSame {
				return code, err
			}
		}
		off += chunk
		ea, eb = advance(ea, off), advance(eb, off)
	}

	if sizeA != sizeB {
		fmt.Fprintln(out, "Warning: Image size mismatch!")
		over, name, total := a, nameA, sizeA
		if sizeB > sizeA {
			over, name, total = b, nameB, sizeB
		}
		for off := common; off < total; {
			exts, err := block.MapChain(over, off, min(total-off, 1<<30))
			if err != nil {
				return CompareMapError, fmt.Errorf("error while reading block status of %s at offset %d: %w", name, off, err)
			}
			for _, e := range exts {
				if e.Status&block.StatusAllocated != 0 && e.Status&block.StatusZero == 0 {
					for p := e.Offset; p < e.Offset+e.Length; p += compareBuf {
						n := min(compareBuf, e.Offset+e.Length-p)
						if code, err := checkEmpty(over, name, buf1[:n], p, out); code != CompareSame {
							return code, err
						}
					}
				}
				off += e.Length
			}
		}
	}
	fmt.Fprintln(out, "Images are identical.")
	return CompareSame, nil
}

// advance drops the parts of exts before off.
func advance(exts []block.Extent, off int64) []block.Extent {
	for len(exts) > 0 {
		e := &exts[0]
		if e.Offset+e.Length <= off {
			exts = exts[1:]
			continue
		}
		if e.Offset < off {
			d := off - e.Offset
			e.Offset, e.Length = off, e.Length-d
			if e.HostOffset >= 0 {
				e.HostOffset += d
			}
		}
		break
	}
	return exts
}

func readAt(img block.Image, name string, p []byte, off int64) (int, error) {
	if _, err := img.ReadAt(p, off); err != nil {
		return CompareReadError, fmt.Errorf("error while reading offset %d of %s: %w", off, name, err)
	}
	return CompareSame, nil
}

// compareBuffers reports the length of the leading run of 512-byte
// sectors that are equal (or all differ) and whether that run differs, as
// qemu-img's compare_buffers; a mismatch is reported at the first sector
// of the differing run.
func compareBuffers(p, q []byte) (int64, bool) {
	n := int64(len(p))
	i := min(n, sector)
	diff := !bytes.Equal(p[:i], q[:i])
	for i < n {
		l := min(n-i, sector)
		if !bytes.Equal(p[i:i+l], q[i:i+l]) != diff {
			break
		}
		i += l
	}
	if diff {
		return 0, true
	}
	return i, i < n
}

// checkEmpty verifies that img reads as zeros over len(p) bytes at off,
// reporting the first non-zero sector as a mismatch.
func checkEmpty(img block.Image, name string, p []byte, off int64, out io.Writer) (int, error) {
	if code, err := readAt(img, name, p, off); err != nil {
		return code, err
	}
	for i := int64(0); i < int64(len(p)); i += sector {
		if !block.IsZero(p[i:min(int64(len(p)), i+sector)]) {
			fmt.Fprintf(out, "Content mismatch at offset %d!\n", off+i)
			return CompareDifferent, nil
		}
	}
	return CompareSame, nil
}
