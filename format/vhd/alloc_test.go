package vhd

import (
	"encoding/binary"
	"runtime"
	"testing"

	"vdisk/block"
)

// TestHostileHeaderAllocation opens small images whose headers claim huge
// tables, blocks and locators, and checks that opening, reading, mapping,
// describing and checking them allocates no more than a small bound: no
// buffer is sized by a header field before the file is known to hold it.
func TestHostileHeaderAllocation(t *testing.T) {
	be := binary.BigEndian
	setHeader := func(b []byte, off int, v uint32) []byte {
		be.PutUint32(b[footerSize+off:], v)
		be.PutUint32(b[footerSize+36:], 0)
		be.PutUint32(b[footerSize+36:], checksum(b[footerSize:footerSize+headerSize], 36))
		return b
	}
	base := func() []byte {
		return handImage(t, typeDynamic, 64<<10, 4096, nil, nil)
	}
	huge := func(withBlock bool) []byte {
		// 2040 GiB of 1 GiB blocks: a valid table of 2040 entries, one
		// pointing into the file, whose block reaches far past its end.
		ft, err := newFooter(maxSectors*sectorSize, Geometry{maxCyls, maxHeads, maxSecs})
		if err != nil {
			t.Fatal(err)
		}
		ft.DiskType = typeDynamic
		f := &memFile{}
		if err := writeDynamic(f, ft, &Header{BlockSize: maxBlockSize}, nil); err != nil {
			t.Fatal(err)
		}
		b := append(f.b[:len(f.b)-footerSize], make([]byte, 8192)...)
		b = append(b, f.b[len(f.b)-footerSize:]...)
		if withBlock {
			be.PutUint32(b[3*sectorSize:], uint32((len(b)-8192-footerSize)/sectorSize))
		}
		return b
	}
	diff := func() []byte {
		b := handImage(t, typeDifferencing, 64<<10, 4096, []locatorData{{platW2ru, encodeUTF16("p.vhd", leUTF16)}}, nil)
		// The locator claims 64 KiB at the end of the file.
		l := footerSize + 576
		be.PutUint32(b[l+8:], maxLocatorData)
		be.PutUint64(b[l+16:], uint64(len(b)-100))
		return setHeader(b, 0, be.Uint32(b[footerSize:]))
	}
	for name, b := range map[string][]byte{
		"BAT of 4G entries":          setHeader(base(), 28, 0xFFFFFFFF),
		"1 GiB blocks, 2040 GiB":     huge(true),
		"1 GiB blocks, unallocated":  huge(false),
		"1 GiB blocks, 2 GiB BAT":    setHeader(huge(false), 28, 1<<29),
		"locator past the end":       diff(),
		"block size 2^31":            setHeader(base(), 32, 1<<31),
		"max table entries, 4K size": setHeader(base(), 28, 1<<30),
	} {
		for _, ro := range []bool{true, false} {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			img, err := Open(&memFile{b: append([]byte(nil), b...)}, &block.OpenOptions{ReadOnly: ro})
			if err == nil {
				buf := make([]byte, 64<<10)
				img.ReadAt(buf, 0)
				img.ReadAt(buf, img.Size()-int64(len(buf)))
				img.BlockStatus(0, img.Size())
				block.MapChain(img, 0, min(img.Size(), 1<<30))
				img.Info()
				if !ro {
					img.WriteAt(buf[:4096], 1<<20)
				}
				img.(block.Checker).Check(block.RepairNone)
				img.Close()
			}
			runtime.ReadMemStats(&after)
			n := after.TotalAlloc - before.TotalAlloc
			t.Logf("%s (read-only %v): %d bytes for a %d-byte file (%v)", name, ro, n, len(b), err)
			if n > 1<<20 {
				t.Errorf("%s (read-only %v): %d bytes allocated for a %d-byte file", name, ro, n, len(b))
			}
		}
	}
}
