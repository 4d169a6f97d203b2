// Package qcow2 is the QCOW2 format driver (QEMU copy-on-write, versions 2
// and 3), following docs/interop/qcow2.txt of QEMU.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

const (
	magic = 0x514649fb // "QFI\xfb"

	minClusterBits = 9
	maxClusterBits = 21

	// QEMU's limits; images beyond them are refused rather than letting a
	// hostile header make us allocate huge tables.
	maxL1Bytes       = 32 << 20
	maxReftableBytes = 8 << 20
	maxSnapshots     = 65536
	maxBackingName   = 1023
	maxSnapshotTable = 64 << 20

	v2HeaderLen = 72
	v3HeaderLen = 104
)

// Incompatible feature bits.
const (
	incDirty       = 1 << 0
	incCorrupt     = 1 << 1
	incDataFile    = 1 << 2
	incCompression = 1 << 3
	incExtL2       = 1 << 4
	incKnown       = incDirty | incCorrupt | incDataFile | incCompression | incExtL2
)

// Compatible and autoclear feature bits.
const (
	compatLazyRefcounts = 1 << 0
	autoclearBitmaps    = 1 << 0
	autoclearRawData    = 1 << 1
)

// Header extension types.
const (
	extEnd          = 0x00000000
	extBackingFmt   = 0xe2792aca
	extFeatureTable = 0x6803f857
	extBitmaps      = 0x23852875
	extCrypto       = 0x0537be77
	extDataFile     = 0x44415441
)

const (
	compressionZlib = 0
	compressionZstd = 1
)

// extension is a header extension kept verbatim so that a header rewrite
// preserves extensions this driver does not interpret.
type extension struct {
	typ  uint32
	data []byte
}

// header is the parsed image header.
type header struct {
	version          uint32
	backingOffset    uint64
	backingSize      uint32
	clusterBits      uint32
	size             uint64
	cryptMethod      uint32
	l1Size           uint32
	l1Offset         uint64
	reftableOffset   uint64
	reftableClusters uint32
	nbSnapshots      uint32
	snapshotsOffset  uint64
	incompatible     uint64
	compatible       uint64
	autoclear        uint64
	refcountOrder    uint32
	headerLength     uint32
	compressionType  uint8

	backingFile string
	backingFmt  string
	dataFile    string
	features    map[[2]byte]string // (type, bit) -> name from the feature name table
	exts        []extension        // every extension but the end marker, in order
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// parseHeader decodes and validates the first cluster of an image. fileSize
// bounds table offsets. The checks here are everything later code relies on
// to do arithmetic on header fields without overflow.
func parseHeader(b []byte, fileSize int64) (*header, error) {
	if len(b) < v2HeaderLen {
		return nil, errors.New("qcow2: image too short for a header")
	}
	if be32(b) != magic {
		return nil, errors.New("qcow2: bad magic")
	}
	h := &header{
		version:          be32(b[4:]),
		backingOffset:    be64(b[8:]),
		backingSize:      be32(b[16:]),
		clusterBits:      be32(b[20:]),
		size:             be64(b[24:]),
		cryptMethod:      be32(b[32:]),
		l1Size:           be32(b[36:]),
		l1Offset:         be64(b[40:]),
		reftableOffset:   be64(b[48:]),
		reftableClusters: be32(b[56:]),
		nbSnapshots:      be32(b[60:]),
		snapshotsOffset:  be64(b[64:]),
		refcountOrder:    4,
		headerLength:     v2HeaderLen,
	}
	switch h.version {
	case 2:
	case 3:
		if len(b) < v3HeaderLen {
			return nil, errors.New("qcow2: image too short for a version 3 header")
		}
		h.incompatible = be64(b[72:])
		h.compatible = be64(b[80:])
		h.autoclear = be64(b[88:])
		h.refcountOrder = be32(b[96:])
		h.headerLength = be32(b[100:])
		if h.headerLength < v3HeaderLen || h.headerLength%8 != 0 && h.headerLength != v3HeaderLen {
			return nil, fmt.Errorf("qcow2: invalid header length %d", h.headerLength)
		}
		if h.headerLength > 104 && len(b) > 104 {
			h.compressionType = b[104]
		}
	default:
		return nil, fmt.Errorf("qcow2: Unsupported qcow2 version %d", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, fmt.Errorf("qcow2: unsupported cluster size: 2^%d", h.clusterBits)
	}
	cs := uint64(1) << h.clusterBits
	if uint64(len(b)) < cs && int64(len(b)) < fileSize {
		return nil, errors.New("qcow2: header buffer shorter than a cluster")
	}
	if uint64(h.headerLength) > cs {
		return nil, errors.New("qcow2: header length exceeds the cluster size")
	}
	if h.refcountOrder > 6 {
		return nil, fmt.Errorf("qcow2: refcount width 2^%d bits is not supported", h.refcountOrder)
	}
	if h.version == 2 && h.refcountOrder != 4 {
		return nil, errors.New("qcow2: version 2 images need 16-bit refcounts")
	}
	if h.cryptMethod != 0 {
		return nil, errors.New("qcow2: encrypted images are not supported")
	}
	if h.size > 1<<62 {
		return nil, fmt.Errorf("qcow2: virtual size %d too large", h.size)
	}
	// Extensions: parsed before the feature check so that unknown feature
	// bits can be named from the feature name table.
	h.features = map[[2]byte]string{}
	if err := h.parseExtensions(b[:min(uint64(len(b)), cs)]); err != nil {
		return nil, err
	}
	if unk := h.incompatible &^ incKnown; unk != 0 {
		return nil, fmt.Errorf("qcow2: unsupported incompatible features: %s", h.featureNames(0, unk))
	}
	if h.compressionType > compressionZstd {
		return nil, fmt.Errorf("qcow2: unknown compression type %d", h.compressionType)
	}
	// As QEMU: the feature bit is set exactly when the type is not zlib,
	// so that a reader that knows only zlib never meets another type.
	if h.compressionType != compressionZlib && h.incompatible&incCompression == 0 {
		return nil, errors.New("qcow2: compression type set without the compression type feature bit")
	}
	if h.compressionType == compressionZlib && h.incompatible&incCompression != 0 {
		return nil, errors.New("qcow2: compression type feature bit set with compression type zlib (it must not be)")
	}
	// Tables.
	if h.l1Size > maxL1Bytes/8 {
		return nil, fmt.Errorf("qcow2: L1 table of %d entries is too large", h.l1Size)
	}
	entries := uint64(cs / 8)
	if h.incompatible&incExtL2 != 0 {
		entries = cs / 16
		if h.clusterBits < 14 {
			return nil, errors.New("qcow2: extended L2 entries need clusters of at least 16 KiB")
		}
	}
	perL1 := cs * entries
	if need := (h.size + perL1 - 1) / perL1; need > uint64(h.l1Size) {
		return nil, fmt.Errorf("qcow2: L1 table of %d entries too small for virtual size %d", h.l1Size, h.size)
	}
	if h.l1Size > 0 {
		if err := checkTable("L1 table", h.l1Offset, uint64(h.l1Size)*8, cs, fileSize); err != nil {
			return nil, err
		}
	}
	if h.reftableClusters == 0 || uint64(h.reftableClusters)*cs > maxReftableBytes {
		return nil, fmt.Errorf("qcow2: refcount table of %d clusters is invalid", h.reftableClusters)
	}
	if err := checkTable("refcount table", h.reftableOffset, uint64(h.reftableClusters)*cs, cs, fileSize); err != nil {
		return nil, err
	}
	if h.l1Size > 0 && overlaps(h.l1Offset, uint64(h.l1Size)*8, h.reftableOffset, uint64(h.reftableClusters)*cs) {
		return nil, errors.New("qcow2: L1 table overlaps the refcount table")
	}
	if h.nbSnapshots > maxSnapshots {
		return nil, fmt.Errorf("qcow2: too many snapshots (%d)", h.nbSnapshots)
	}
	if h.backingOffset != 0 {
		if h.backingSize > maxBackingName || h.backingOffset >= cs || h.backingOffset+uint64(h.backingSize) > cs ||
			h.backingOffset+uint64(h.backingSize) > uint64(len(b)) {
			return nil, errors.New("qcow2: backing file name is not inside the first cluster")
		}
		h.backingFile = string(b[h.backingOffset : h.backingOffset+uint64(h.backingSize)])
	}
	return h, nil
}

// checkTable validates a cluster-aligned table at off of n bytes: not the
// header cluster, inside the file, no overflow.
func checkTable(what string, off, n, cs uint64, fileSize int64) error {
	if off%cs != 0 {
		return fmt.Errorf("qcow2: %s offset %#x is not cluster aligned", what, off)
	}
	if off == 0 {
		return fmt.Errorf("qcow2: %s overlaps the header", what)
	}
	if off > 1<<56 || n > 1<<56 || off+n > uint64(fileSize) {
		return fmt.Errorf("qcow2: %s at %#x (%d bytes) is beyond the end of the file", what, off, n)
	}
	return nil
}

func overlaps(a, an, b, bn uint64) bool { return a < b+bn && b < a+an }

func (h *header) parseExtensions(b []byte) error {
	off := uint64(h.headerLength)
	for {
		if off+8 > uint64(len(b)) {
			return nil // no end marker before the cluster ends: accept, as QEMU does
		}
		typ := be32(b[off:])
		n := uint64(be32(b[off+4:]))
		off += 8
		if typ == extEnd {
			return nil
		}
		if n > uint64(len(b))-off {
			return fmt.Errorf("qcow2: header extension %#x overruns the first cluster", typ)
		}
		data := append([]byte(nil), b[off:off+n]...)
		switch typ {
		case extBackingFmt:
			h.backingFmt = string(data)
		case extFeatureTable:
			for i := 0; i+48 <= len(data); i += 48 {
				name := string(data[i+2 : i+48])
				if k := strings.IndexByte(name, 0); k >= 0 {
					name = name[:k]
				}
				h.features[[2]byte{data[i], data[i+1]}] = name
			}
		case extDataFile:
			h.dataFile = string(data)
		}
		h.exts = append(h.exts, extension{typ, data})
		off += (n + 7) &^ 7
	}
}

// featureNames names the bits of mask of the given feature type (0
// incompatible, 1 compatible, 2 autoclear), from the image's feature name
// table where it has one.
func (h *header) featureNames(typ byte, mask uint64) string {
	var names []string
	for bit := 0; bit < 64; bit++ {
		if mask&(1<<bit) == 0 {
			continue
		}
		if n, ok := h.features[[2]byte{typ, byte(bit)}]; ok && n != "" {
			names = append(names, n)
		} else {
			names = append(names, fmt.Sprintf("unknown feature bit %d", bit))
		}
	}
	return strings.Join(names, ", ")
}

// featureTable is the feature name table QEMU writes into new images.
func featureTable() []byte {
	feats := []struct {
		typ, bit byte
		name     string
	}{
		{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
		{0, 3, "compression type"}, {0, 4, "extended L2 entries"},
		{1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
	}
	b := make([]byte, 48*len(feats))
	for i, f := range feats {
		b[i*48] = f.typ
		b[i*48+1] = f.bit
		copy(b[i*48+2:i*48+48], f.name)
	}
	return b
}

// encode renders the header and its extensions into one cluster-sized
// buffer (the backing file name at its end of the extensions).
func (h *header) encode(cs int) ([]byte, error) {
	b := make([]byte, cs)
	binary.BigEndian.PutUint32(b[0:], magic)
	binary.BigEndian.PutUint32(b[4:], h.version)
	binary.BigEndian.PutUint32(b[20:], h.clusterBits)
	binary.BigEndian.PutUint64(b[24:], h.size)
	binary.BigEndian.PutUint32(b[32:], h.cryptMethod)
	binary.BigEndian.PutUint32(b[36:], h.l1Size)
	binary.BigEndian.PutUint64(b[40:], h.l1Offset)
	binary.BigEndian.PutUint64(b[48:], h.reftableOffset)
	binary.BigEndian.PutUint32(b[56:], h.reftableClusters)
	binary.BigEndian.PutUint32(b[60:], h.nbSnapshots)
	binary.BigEndian.PutUint64(b[64:], h.snapshotsOffset)
	off := v2HeaderLen
	if h.version >= 3 {
		binary.BigEndian.PutUint64(b[72:], h.incompatible)
		binary.BigEndian.PutUint64(b[80:], h.compatible)
		binary.BigEndian.PutUint64(b[88:], h.autoclear)
		binary.BigEndian.PutUint32(b[96:], h.refcountOrder)
		binary.BigEndian.PutUint32(b[100:], h.headerLength)
		if h.headerLength > v3HeaderLen {
			b[104] = h.compressionType
		}
		off = int(h.headerLength)
	}
	put := func(typ uint32, data []byte) error {
		n := (len(data) + 7) &^ 7
		if off+8+n > cs {
			return errors.New("qcow2: header extensions do not fit in the first cluster")
		}
		binary.BigEndian.PutUint32(b[off:], typ)
		binary.BigEndian.PutUint32(b[off+4:], uint32(len(data)))
		copy(b[off+8:], data)
		off += 8 + n
		return nil
	}
	for _, e := range h.exts {
		if e.typ == extBackingFmt {
			continue
		}
		if err := put(e.typ, e.data); err != nil {
			return nil, err
		}
	}
	if h.backingFmt != "" {
		if err := put(extBackingFmt, []byte(h.backingFmt)); err != nil {
			return nil, err
		}
	}
	if err := put(extEnd, nil); err != nil {
		return nil, err
	}
	if h.backingFile != "" {
		if len(h.backingFile) > maxBackingName || off+len(h.backingFile) > cs {
			return nil, errors.New("qcow2: backing file name too long")
		}
		binary.BigEndian.PutUint64(b[8:], uint64(off))
		binary.BigEndian.PutUint32(b[16:], uint32(len(h.backingFile)))
		copy(b[off:], h.backingFile)
	}
	return b, nil
}

// ext returns the data of the header extension of type typ (the last one,
// should there be several) and whether there is one.
func (h *header) ext(typ uint32) ([]byte, bool) {
	var data []byte
	found := false
	for _, e := range h.exts {
		if e.typ == typ {
			data, found = e.data, true
		}
	}
	return data, found
}
