package qcow2

// External data files (incompatible feature bit 2, header extension
// 0x44415441, autoclear bit 1 data_file_raw), per QEMU's
// docs/interop/qcow2.txt: guest clusters live in another file at host
// offset = guest offset, are not refcounted, and may not be compressed;
// the qcow2 file keeps only metadata.

import (
	"errors"
	"fmt"
	"os"

	"vdisk/block"
)

// openDataFile opens the external data file named by the header, through
// the same protocol layer (and with the same read-only and sharing flags)
// as the image itself, so it gets QEMU-compatible locks.
func (img *Image) openDataFile() error {
	h := img.h
	if h.incompatible&incDataFile == 0 {
		if h.autoclear&autoclearRawData != 0 {
			return errors.New("qcow2: data-file-raw requires a data file")
		}
		return nil
	}
	if h.version < 3 {
		return errors.New("qcow2: external data file feature in a version 2 image")
	}
	if _, ok := h.ext(extDataFile); !ok || h.dataFile == "" {
		return fmt.Errorf("qcow2: image uses an external data file but has no data file name (header extension %#x missing)", uint32(extDataFile))
	}
	full := block.ResolveBacking(img.name, h.dataFile)
	if full != h.dataFile && block.IsLocalName(full) {
		// A relative name is looked for next to the image, as backing
		// files are; QEMU 7.2 takes it relative to its working directory
		// instead, where qemu-img create also puts it, so that is where
		// to look when the image's directory has no such file.
		if _, err := os.Stat(full); errors.Is(err, os.ErrNotExist) {
			if _, err := os.Stat(h.dataFile); err == nil {
				full = h.dataFile
			}
		}
	}
	df, err := openDataFileFunc(full, block.OpenFlags{ReadOnly: img.ro, ForceShare: img.opts.ForceShare, NoCache: img.opts.NoCache})
	if err != nil {
		return fmt.Errorf("qcow2: could not open data file '%s': %w", h.dataFile, err)
	}
	img.df = df
	img.dfRaw = h.autoclear&autoclearRawData != 0
	return nil
}

// openDataFileFunc opens data files; the fuzz tests replace it so that a
// mutated header cannot name a real file to write to.
var openDataFileFunc = block.OpenFile

// In memory, host offsets of data file clusters are biased by one cluster
// so that "host offset 0" keeps meaning unallocated everywhere: in a data
// file, guest cluster 0 is at offset 0, and its entry is told from an
// unallocated one only by the COPIED flag (all data file clusters have an
// implicit refcount of 1), as QEMU does. getEntry and setEntry convert;
// data() takes the biased offsets.

// fromDisk converts an L2 descriptor as stored to its in-memory form.
func (img *Image) fromDisk(d uint64) uint64 {
	if d&flagCompressed != 0 {
		return d
	}
	if d&offsetMask == 0 {
		// A zero cluster at offset 0 is a plain zero cluster (QEMU).
		if d&flagCopied == 0 || !img.ext && d&flagZero != 0 {
			return d
		}
	}
	// An offset that overflows into the reserved bits makes the entry
	// invalid, which lookup and check report.
	return d + uint64(img.cs)
}

// toDisk converts an in-memory L2 descriptor to its stored form.
func (img *Image) toDisk(d uint64) uint64 {
	if d&flagCompressed != 0 || d&offsetMask == 0 {
		return d
	}
	return d - uint64(img.cs)
}

// reportHost is the offset in the data file of an in-memory host offset.
func (img *Image) reportHost(h int64) int64 {
	if img.df != nil && h >= 0 {
		return h - img.cs
	}
	return h
}

type dataIO interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
}

type biasedFile struct {
	f    block.File
	bias int64
}

func (b biasedFile) ReadAt(p []byte, off int64) (int, error)  { return b.f.ReadAt(p, off-b.bias) }
func (b biasedFile) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off-b.bias) }

// data is where guest clusters are read and written, by in-memory host
// offset.
func (img *Image) data() dataIO {
	if img.df != nil {
		return biasedFile{img.df, img.cs}
	}
	return img.f
}

// dataName is the file name map and status report for data clusters.
func (img *Image) dataName() string {
	if img.df != nil {
		return img.df.Name()
	}
	return img.name
}

// keptAutoclear are the autoclear bits a writable open keeps: the driver
// keeps a raw data file's content equal to the guest view, so
// data_file_raw stays true.
func (img *Image) keptAutoclear() uint64 {
	if img.df != nil {
		return autoclearRawData
	}
	return 0
}

// allocData returns the host offset for n new data clusters starting at
// guest cluster vc: in a data file it is the guest offset and nothing is
// refcounted; otherwise fresh clusters of the image file.
func (img *Image) allocData(vc, n int64) (int64, error) {
	if img.df != nil {
		return vc<<img.cbits + img.cs, nil
	}
	return img.allocClusters(n)
}

// dataOverlap is metaOverlap for a data cluster: clusters in a data file
// cannot overlap the metadata, which is in the image file.
func (img *Image) dataOverlap(host int64) string {
	if img.df != nil {
		return ""
	}
	return img.metaOverlap(host, img.cs, olAll)
}

// checkDataEntry enforces that a data-file cluster's host offset is its
// guest offset; anything else would read or overwrite other guest data.
func (img *Image) checkDataEntry(e l2e, vc int64) error {
	if img.df == nil {
		return nil
	}
	if e.compressed() {
		return fmt.Errorf("qcow2: compressed cluster at guest offset %#x in an image with an external data file (corrupt image)", vc<<img.cbits)
	}
	if h := e.host(); h != 0 && h != vc<<img.cbits+img.cs {
		return fmt.Errorf("qcow2: external data file host cluster offset %#x does not match guest cluster offset %#x (corrupt image)", h-img.cs, vc<<img.cbits)
	}
	return nil
}

// zeroDataFile makes [off, off+n) of the data file zeros after the guest
// range was zeroed or discarded: a raw data file must show the guest view,
// so it is zeroed (punched where unmap allows); otherwise the space is
// only given back, where the file can punch holes. img.mu need not be
// held: the range belongs to clusters the caller just zeroed.
func (img *Image) zeroDataFile(off, n int64, unmap bool) error {
	if img.df == nil || n <= 0 {
		return nil
	}
	size, err := img.df.Size()
	if err != nil {
		return fmt.Errorf("qcow2: data file size: %w", err)
	}
	n = min(n, size-off)
	if n <= 0 {
		return nil
	}
	if !img.dfRaw {
		if !unmap {
			return nil
		}
		if hp, ok := img.df.(block.HolePuncher); ok {
			// Best effort: the metadata already says zeros.
			_ = hp.PunchHole(off, n)
		}
		return nil
	}
	if hp, ok := img.df.(block.HolePuncher); ok && unmap {
		if err := hp.PunchHole(off, n); err == nil {
			return nil
		}
	}
	if zr, ok := img.df.(block.ZeroRanger); ok {
		if err := zr.ZeroRange(off, n); err == nil {
			return nil
		}
	}
	if err := block.WriteZeroBytes(img.df, off, n); err != nil {
		return fmt.Errorf("qcow2: zeroing data file: %w", err)
	}
	return nil
}

// growDataFile extends the data file to the virtual size, as qemu-img does
// when it creates or grows an image with one, so that every guest offset
// has its place in it.
func (img *Image) growDataFile(size int64) error {
	if img.df == nil {
		return nil
	}
	cur, err := img.df.Size()
	if err != nil {
		return fmt.Errorf("qcow2: data file size: %w", err)
	}
	if cur < size {
		if err := img.df.Truncate(size); err != nil {
			return fmt.Errorf("qcow2: growing data file: %w", err)
		}
	}
	return nil
}

// dataFileInfo adds qemu-img info's data-file fields.
func (img *Image) dataFileInfo(d block.OrderedMap) block.OrderedMap {
	if img.h.incompatible&incDataFile == 0 {
		return d
	}
	return d.Add("data-file", img.h.dataFile).Add("data-file-raw", img.h.autoclear&autoclearRawData != 0)
}

var errDataFileCompressed = errors.New("qcow2: compression is not supported with an external data file")

// checkDataFile refuses data_file and data_file_raw options that
// createDataFile cannot honour, before anything is created.
func checkDataFile(h *header, opts block.Options) error {
	name := opts.String("data_file", "")
	raw := opts.Bool("data_file_raw", false)
	if name == "" {
		if raw {
			return errors.New("qcow2: data-file-raw requires data-file")
		}
		return nil
	}
	if h.version < 3 {
		return errors.New("qcow2: external data files are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
	}
	if h.backingFile != "" && raw {
		return errors.New("qcow2: backing file and data-file-raw cannot be used at the same time")
	}
	if len(name) > 1023 {
		return errors.New("qcow2: data file name too long")
	}
	return nil
}

// createDataFile handles the data_file and data_file_raw create options as
// qemu-img does: the data file is created (emptied if it exists) with the
// virtual size and preallocated as asked, and the header gets the feature
// bit, the name extension and, with data_file_raw, the autoclear bit. A
// raw data file needs every cluster mapped, so it implies metadata
// preallocation. It returns the preallocation mode left for the qcow2
// metadata.
func createDataFile(h *header, opts block.Options, size int64, prealloc string) (string, error) {
	name := opts.String("data_file", "")
	raw := opts.Bool("data_file_raw", false)
	if name == "" {
		return prealloc, nil
	}
	// As qemu-img: a relative name is created relative to the working
	// directory (and opening looks there too when it is not next to the
	// image).
	df, err := block.OpenFile(name, block.OpenFlags{Create: true, CreateSize: size})
	if err != nil {
		return "", fmt.Errorf("qcow2: could not create data file '%s': %w", name, err)
	}
	err = df.Truncate(0)
	if err == nil {
		err = df.Truncate(size)
	}
	if err == nil {
		switch prealloc {
		case "falloc":
			a, ok := df.(block.Allocator)
			if !ok {
				err = errors.New("preallocation=falloc is not supported by this container")
			} else {
				err = a.Allocate(0, size)
			}
		case "full":
			err = block.WriteZeroBytes(df, 0, size)
		}
	}
	if err == nil {
		err = df.Sync()
	}
	if cerr := df.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("qcow2: data file '%s': %w", name, err)
	}
	h.dataFile = name
	h.incompatible |= incDataFile
	h.exts = append(h.exts, extension{extDataFile, []byte(name)})
	if raw {
		h.autoclear |= autoclearRawData
		if prealloc == "off" {
			prealloc = "metadata"
		}
	}
	return prealloc, nil
}
