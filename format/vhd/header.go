package vhd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/url"
	"strings"
	"unicode/utf16"
)

const (
	headerSize   = 1024
	headerCookie = "cxsparse"
	// maxLocatorData bounds what is read for one parent locator: a path.
	maxLocatorData = 64 << 10
	minBlockSize   = sectorSize
	maxBlockSize   = 1 << 30 // far beyond the 2 MiB everyone uses; bounds bitmap buffers
	// minBitmapBlock is the smallest block whose sector bitmap fills a
	// whole byte. Below it the specification still pads the bitmap to one
	// sector but QEMU rounds it down to none, so the two disagree on where
	// the block's data starts. vdisk creates no such blocks, opens dynamic
	// disks that have them as QEMU does (their reads never need the
	// bitmap), and refuses differencing disks that have them.
	minBitmapBlock = 8 * sectorSize
)

// Locator platform codes.
const (
	platNone = ""
	platW2ru = "W2ru" // UTF-16LE path relative to the child
	platW2ku = "W2ku" // UTF-16LE absolute path
	platMacX = "MacX" // UTF-8 file:// URL
)

// Locator is one parent locator entry of the dynamic disk header.
type Locator struct {
	Code      [4]byte
	DataSpace uint32 // sectors reserved (bytes, in some writers)
	DataLen   uint32 // bytes used
	DataOff   uint64
}

// Header is the dynamic disk header of dynamic and differencing disks.
type Header struct {
	DataOffset      uint64
	TableOffset     uint64
	Version         uint32
	MaxEntries      uint32
	BlockSize       uint32
	Checksum        uint32
	ParentUUID      [16]byte
	ParentTimestamp uint32
	ParentName      string // decoded from UTF-16BE
	Locators        [8]Locator
}

// parseHeader decodes and validates a dynamic disk header. checksumErr is
// returned separately so that an otherwise sound header with a bad checksum
// can still be opened for repair.
func parseHeader(b []byte) (h *Header, checksumErr error, err error) {
	if len(b) < headerSize {
		return nil, nil, fmt.Errorf("dynamic header: short (%d bytes)", len(b))
	}
	b = b[:headerSize]
	if !bytes.Equal(b[:8], []byte(headerCookie)) {
		return nil, nil, fmt.Errorf("dynamic header: cookie is %q, not %q", b[:8], headerCookie)
	}
	be := binary.BigEndian
	h = &Header{
		DataOffset:      be.Uint64(b[8:]),
		TableOffset:     be.Uint64(b[16:]),
		Version:         be.Uint32(b[24:]),
		MaxEntries:      be.Uint32(b[28:]),
		BlockSize:       be.Uint32(b[32:]),
		Checksum:        be.Uint32(b[36:]),
		ParentTimestamp: be.Uint32(b[56:]),
	}
	copy(h.ParentUUID[:], b[40:56])
	h.ParentName = decodeUTF16(b[64:576], binary.BigEndian)
	for i := range h.Locators {
		e := b[576+24*i:]
		l := &h.Locators[i]
		copy(l.Code[:], e[0:4])
		l.DataSpace = be.Uint32(e[4:])
		l.DataLen = be.Uint32(e[8:])
		l.DataOff = be.Uint64(e[16:])
	}
	if h.Version>>16 != 1 {
		return nil, nil, fmt.Errorf("dynamic header: version %#08x is not 1.x", h.Version)
	}
	if h.BlockSize < minBlockSize || h.BlockSize > maxBlockSize || bits.OnesCount32(h.BlockSize) != 1 {
		return nil, nil, fmt.Errorf("dynamic header: block size %d is not a power of two between %d and %d", h.BlockSize, minBlockSize, maxBlockSize)
	}
	if sum := checksum(b, 36); sum != h.Checksum {
		checksumErr = fmt.Errorf("dynamic header: checksum is %#08x, computed %#08x", h.Checksum, sum)
	}
	return h, checksumErr, nil
}

func (h *Header) marshal() []byte {
	b := make([]byte, headerSize)
	be := binary.BigEndian
	copy(b, headerCookie)
	be.PutUint64(b[8:], h.DataOffset)
	be.PutUint64(b[16:], h.TableOffset)
	be.PutUint32(b[24:], h.Version)
	be.PutUint32(b[28:], h.MaxEntries)
	be.PutUint32(b[32:], h.BlockSize)
	copy(b[40:], h.ParentUUID[:])
	be.PutUint32(b[56:], h.ParentTimestamp)
	copy(b[64:576], encodeUTF16(h.ParentName, binary.BigEndian))
	for i, l := range h.Locators {
		e := b[576+24*i:]
		copy(e[0:4], l.Code[:])
		be.PutUint32(e[4:], l.DataSpace)
		be.PutUint32(e[8:], l.DataLen)
		be.PutUint64(e[16:], l.DataOff)
	}
	be.PutUint32(b[36:], checksum(b, 36))
	return b
}

// bitmapSize is the size of a block's sector bitmap, padded to a sector,
// by QEMU's reading: 0 for blocks below minBitmapBlock.
func bitmapSize(blockSize uint32) int64 {
	n := int64(blockSize) / sectorSize / 8
	return (n + sectorSize - 1) / sectorSize * sectorSize
}

func decodeUTF16(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := order.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

func encodeUTF16(s string, order binary.ByteOrder) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		order.PutUint16(b[2*i:], c)
	}
	return b
}

// locatorPath turns a locator's data into a local path, or "" when the
// platform is not one a path can be taken from.
func locatorPath(code string, data []byte) string {
	switch code {
	case platW2ru, platW2ku:
		return fromWindowsPath(decodeUTF16(data, binary.LittleEndian))
	case platMacX:
		s := strings.TrimRight(string(data), "\x00")
		if u, err := url.Parse(s); err == nil && u.Scheme == "file" {
			return u.Path
		}
		return s
	}
	return ""
}

// fromWindowsPath maps a Windows path to a local one: separators become
// slashes and a leading ".\" is dropped. Drive letters stay; such a path
// simply will not be found here, and the error says which one was tried.
func fromWindowsPath(p string) string {
	p = strings.ReplaceAll(p, `\`, "/")
	p = strings.TrimPrefix(p, "./")
	return p
}

// toWindowsPath is the reverse, for the W2ru/W2ku locators vdisk writes.
func toWindowsPath(p string) string { return strings.ReplaceAll(p, "/", `\`) }

var leUTF16 = binary.LittleEndian
