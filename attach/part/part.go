// Package part reads MBR (dos) and GPT partition tables the way the Linux
// kernel's own parsers do, so that a daemon can register partitions with
// BLKPG on kernels built without those parsers.
//
// The table is untrusted: every LBA, size and count is checked against the
// disk before it is used, the EBR chain is bounded, and nothing allocates
// more than a few MiB whatever the table says.
package part

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"strings"
	"unicode/utf16"
)

// Partition is one partition, with offsets in bytes.
type Partition struct {
	// Number is the Linux partition number: the slot (1-4) for MBR
	// primaries, 5 on for logicals in EBR chain order, the entry index
	// plus one for GPT.
	Number int
	Start  int64
	Length int64
	// Type is the MBR type as two hex digits ("83") or the GPT type GUID
	// in upper case.
	Type string
	// UUID and Name are GPT's unique partition GUID and label.
	UUID string
	Name string
	// Extended marks an MBR extended partition: a container of logicals,
	// which Linux exposes only as its first KiB (see DeviceLength).
	Extended bool
}

// DeviceLength is the length Linux gives the partition's block device: an
// extended partition gets max(1 KiB, one sector), so that nobody runs mkfs
// over the logicals it contains.
func (p Partition) DeviceLength(sectorSize int) int64 {
	if !p.Extended {
		return p.Length
	}
	return min(p.Length, max(int64(sectorSize), 1024))
}

// Table is a parsed partition table.
type Table struct {
	Label      string // "dos" or "gpt", as sfdisk names them
	Partitions []Partition
}

// ErrNoTable means the disk carries no partition table this package knows.
var ErrNoTable = errors.New("no partition table")

// Limits on what a table may make us do.
const (
	// MaxPartitions is the kernel's DISK_MAX_PARTS: partition numbers
	// run from 1 to MaxPartitions-1.
	MaxPartitions = 256
	// maxEntryBytes bounds a GPT entry array (the usual one is 16 KiB).
	maxEntryBytes = 4 << 20
	maxEntrySize  = 4096
	// maxEmptyLinks is how many EBRs in a row may carry no data
	// partition before the chain is abandoned, as Linux does.
	maxEmptyLinks = 100
)

// Parse reads the partition table of a disk of size bytes with the given
// logical sector size (512 to 64 KiB, a power of two). It returns
// ErrNoTable when there is none. As Linux does, a GPT is used only behind
// a protective (or hybrid) MBR, partitions that start beyond the disk are
// dropped and those that run past its end are cut at the end.
func Parse(r io.ReaderAt, size int64, sectorSize int) (*Table, error) {
	if sectorSize < 512 || sectorSize > 65536 || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("part: sector size %d is not supported", sectorSize)
	}
	if size < 0 {
		return nil, fmt.Errorf("part: disk size %d", size)
	}
	d := &disk{r: r, ssz: int64(sectorSize), sectors: size / int64(sectorSize)}
	if d.sectors < 1 {
		return nil, ErrNoTable
	}
	mbr, err := d.sector(0)
	if err != nil {
		return nil, err
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return nil, ErrNoTable
	}
	ents := mbrEntries(mbr)
	gpt := false
	for _, e := range ents {
		if e.typ == 0xEE {
			gpt = true
		}
	}
	if gpt {
		// A disk with a GPT partition type in its MBR is a GPT disk:
		// Linux never reads the MBR's other entries then, not even when
		// the GPT is broken.
		if !pmbrValid(ents) {
			return nil, fmt.Errorf("part: the MBR has a GPT entry (0xee) that does not start at LBA 1")
		}
		parts, err := d.gpt()
		if err != nil {
			return nil, err
		}
		return &Table{Label: "gpt", Partitions: d.clip(parts)}, nil
	}
	for _, e := range ents {
		if e.boot != 0 && e.boot != 0x80 {
			// A boot sector with 0x55AA but no table: a FAT file system
			// on the whole disk, say.
			return nil, ErrNoTable
		}
	}
	parts, err := d.dos(ents)
	if err != nil {
		return nil, err
	}
	// Logicals come before a later primary in the chain's order.
	sort.SliceStable(parts, func(i, j int) bool { return parts[i].Number < parts[j].Number })
	return &Table{Label: "dos", Partitions: d.clip(parts)}, nil
}

type disk struct {
	r       io.ReaderAt
	ssz     int64 // logical sector size
	sectors int64 // whole sectors on the disk
}

// read reads n bytes at sector lba, all within the disk.
func (d *disk) read(lba, n int64) ([]byte, error) {
	if lba < 0 || lba >= d.sectors || n < 0 || n > (d.sectors-lba)*d.ssz {
		return nil, fmt.Errorf("part: %d bytes at LBA %d lie beyond the disk (%d sectors)", n, lba, d.sectors)
	}
	b := make([]byte, n)
	got, err := d.r.ReadAt(b, lba*d.ssz)
	if got == len(b) {
		return b, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("part: reading LBA %d: %w", lba, err)
}

func (d *disk) sector(lba int64) ([]byte, error) { return d.read(lba, d.ssz) }

// clip drops partitions that start beyond the disk and cuts those that run
// past its end, as the kernel does when it adds them.
func (d *disk) clip(parts []Partition) []Partition {
	end := d.sectors * d.ssz
	out := parts[:0]
	for _, p := range parts {
		if p.Start >= end || p.Length <= 0 {
			continue
		}
		if p.Length > end-p.Start {
			p.Length = end - p.Start
		}
		out = append(out, p)
	}
	return out
}

type mbrEntry struct {
	boot  byte
	typ   byte
	start uint32 // LBA
	count uint32 // sectors
}

func mbrEntries(sec []byte) [4]mbrEntry {
	var es [4]mbrEntry
	for i := range es {
		e := sec[0x1be+16*i:]
		es[i] = mbrEntry{boot: e[0], typ: e[4], start: binary.LittleEndian.Uint32(e[8:]), count: binary.LittleEndian.Uint32(e[12:])}
	}
	return es
}

func isExtended(typ byte) bool { return typ == 0x05 || typ == 0x0f || typ == 0x85 }

// pmbrValid is the kernel's test for a protective or hybrid MBR: the GPT
// entry must start at LBA 1.
func pmbrValid(ents [4]mbrEntry) bool {
	for _, e := range ents {
		if e.typ == 0xEE && e.start == 1 {
			return true
		}
	}
	return false
}

func (d *disk) part(num int, lba, sectors int64, typ byte) Partition {
	return Partition{Number: num, Start: lba * d.ssz, Length: sectors * d.ssz, Type: fmt.Sprintf("%02x", typ), Extended: isExtended(typ)}
}

// dos reads the four primaries and the EBR chain of each extended one.
func (d *disk) dos(ents [4]mbrEntry) ([]Partition, error) {
	var parts []Partition
	next := 5
	for i, e := range ents {
		if e.count == 0 {
			continue
		}
		parts = append(parts, d.part(i+1, int64(e.start), int64(e.count), e.typ))
		if isExtended(e.typ) {
			parts = d.ebrChain(parts, int64(e.start), int64(e.count), &next)
		}
	}
	return parts, nil
}

// ebrChain follows the linked list of extended boot records that starts at
// the extended partition [first, first+size). Each EBR describes its data
// partition relative to itself and the next EBR relative to first. A read
// error or a missing signature ends the chain quietly, as in Linux; so does
// a link back to an EBR already read (Linux would loop until its
// partition limit).
func (d *disk) ebrChain(parts []Partition, first, size int64, next *int) []Partition {
	this, thisSize := first, size
	seen := map[int64]bool{}
	empty := 0
	for *next < MaxPartitions && !seen[this] {
		if empty++; empty > maxEmptyLinks {
			break
		}
		seen[this] = true
		sec, err := d.sector(this)
		if err != nil || sec[510] != 0x55 || sec[511] != 0xAA {
			break
		}
		ents := mbrEntries(sec)
		for i, e := range ents {
			if e.count == 0 || isExtended(e.typ) {
				continue
			}
			offs, n := int64(e.start), int64(e.count)
			start := this + offs
			// The 3rd and 4th entries sometimes hold garbage: take them
			// only when they lie inside the extended partition.
			if i >= 2 && (offs+n > thisSize || start < first || start+n > first+size) {
				continue
			}
			parts = append(parts, d.part(*next, start, n, e.typ))
			empty = 0
			if *next++; *next == MaxPartitions {
				return parts
			}
		}
		link := -1
		for i, e := range ents {
			if e.count != 0 && isExtended(e.typ) {
				link = i
				break
			}
		}
		if link < 0 {
			break
		}
		this, thisSize = first+int64(ents[link].start), int64(ents[link].count)
	}
	return parts
}

// gptHeader is the part of a GPT header we use.
type gptHeader struct {
	myLBA, altLBA         int64
	firstUsable, lastUsa  int64
	entryLBA              int64
	entryCount, entrySize int64
	entryCRC              uint32
}

// gpt reads the primary GPT, or the backup when the primary is bad.
func (d *disk) gpt() ([]Partition, error) {
	last := d.sectors - 1
	h, ents, perr := d.gptAt(1)
	if perr == nil {
		return d.gptParts(h, ents), nil
	}
	h, ents, berr := d.gptAt(last)
	if berr != nil {
		return nil, fmt.Errorf("part: GPT: primary header: %v; backup header: %w", perr, berr)
	}
	return d.gptParts(h, ents), nil
}

func (d *disk) gptAt(lba int64) (*gptHeader, []byte, error) {
	if lba < 1 || lba >= d.sectors {
		return nil, nil, fmt.Errorf("LBA %d is beyond the disk", lba)
	}
	sec, err := d.sector(lba)
	if err != nil {
		return nil, nil, err
	}
	if string(sec[:8]) != "EFI PART" {
		return nil, nil, fmt.Errorf("no signature at LBA %d", lba)
	}
	le := binary.LittleEndian
	hsize := le.Uint32(sec[12:])
	if hsize < 92 || int64(hsize) > d.ssz {
		return nil, nil, fmt.Errorf("header size %d at LBA %d", hsize, lba)
	}
	hdr := bytes.Clone(sec[:hsize])
	want := le.Uint32(hdr[16:])
	clear(hdr[16:20])
	if got := crc32.ChecksumIEEE(hdr); got != want {
		return nil, nil, fmt.Errorf("header checksum %#08x, expected %#08x, at LBA %d", got, want, lba)
	}
	h := &gptHeader{
		myLBA: int64(le.Uint64(sec[24:])), altLBA: int64(le.Uint64(sec[32:])),
		firstUsable: int64(le.Uint64(sec[40:])), lastUsa: int64(le.Uint64(sec[48:])),
		entryLBA:   int64(le.Uint64(sec[72:])),
		entryCount: int64(le.Uint32(sec[80:])), entrySize: int64(le.Uint32(sec[84:])),
		entryCRC: le.Uint32(sec[88:]),
	}
	last := d.sectors - 1
	switch {
	case h.myLBA != lba:
		return nil, nil, fmt.Errorf("header at LBA %d says it is at LBA %d", lba, h.myLBA)
	case h.firstUsable < 0 || h.lastUsa < h.firstUsable || h.lastUsa > last:
		return nil, nil, fmt.Errorf("usable LBAs %d-%d on a disk of %d sectors", h.firstUsable, h.lastUsa, d.sectors)
	case h.entrySize < 128 || h.entrySize > maxEntrySize || h.entrySize&(h.entrySize-1) != 0:
		return nil, nil, fmt.Errorf("partition entry size %d", h.entrySize)
	case h.entryCount*h.entrySize > maxEntryBytes:
		return nil, nil, fmt.Errorf("%d partition entries of %d bytes: more than %d bytes", h.entryCount, h.entrySize, maxEntryBytes)
	case h.entryLBA < 1 || h.entryLBA > last:
		return nil, nil, fmt.Errorf("partition entries at LBA %d", h.entryLBA)
	}
	ents, err := d.read(h.entryLBA, h.entryCount*h.entrySize)
	if err != nil {
		return nil, nil, fmt.Errorf("partition entries: %w", err)
	}
	if got := crc32.ChecksumIEEE(ents); got != h.entryCRC {
		return nil, nil, fmt.Errorf("partition entries checksum %#08x, expected %#08x", got, h.entryCRC)
	}
	return h, ents, nil
}

// gptParts lists the used entries that lie on the disk; Linux skips the
// others one by one rather than rejecting the table.
func (d *disk) gptParts(h *gptHeader, ents []byte) []Partition {
	var parts []Partition
	last := d.sectors - 1
	le := binary.LittleEndian
	for i := int64(0); i < h.entryCount && i < MaxPartitions-1; i++ {
		e := ents[i*h.entrySize : (i+1)*h.entrySize]
		typ := e[:16]
		if isZero(typ) {
			continue
		}
		start, end := le.Uint64(e[32:]), le.Uint64(e[40:])
		if start > uint64(last) || end > uint64(last) || end < start {
			continue
		}
		parts = append(parts, Partition{
			Number: int(i) + 1,
			Start:  int64(start) * d.ssz,
			Length: int64(end-start+1) * d.ssz,
			Type:   guid(typ),
			UUID:   guid(e[16:32]),
			Name:   utf16Name(e[56:128]),
		})
	}
	return parts
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// guid formats a GUID stored in its mixed-endian on-disk form.
func guid(b []byte) string {
	le := binary.LittleEndian
	return strings.ToUpper(fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16]))
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
