package qcow2

import (
	"errors"
	"fmt"
	"sort"

	"vdisk/block"
)

// createOptions are in qemu-img's order, which is the order of the
// "Formatting ..." line; options without a default (compat, preallocation)
// appear there only when given, as with qemu-img.
var createOptions = []block.OptionSpec{
	{Name: "cluster_size", Type: block.OptSize, Default: "65536", Help: "qcow2 cluster size"},
	{Name: "extended_l2", Type: block.OptBool, Default: "off", Help: "Extended L2 tables"},
	{Name: "preallocation", Type: block.OptString, Help: "Preallocation mode (allowed values: off, metadata, falloc, full; default off)"},
	{Name: "compression_type", Type: block.OptString, Default: "zlib", Help: "Compression method used for image cluster compression (zlib, zstd)"},
	{Name: "size", Type: block.OptSize, Help: "Virtual disk size"},
	{Name: "compat", Type: block.OptString, Help: "Compatibility level (v2 [0.10] or v3 [1.1]; default 1.1)"},
	{Name: "backing_file", Type: block.OptString, Help: "File name of a base image"},
	{Name: "backing_fmt", Type: block.OptString, Help: "Image format of the base image"},
	{Name: "data_file", Type: block.OptString, Help: "File name of an external data file"},
	{Name: "data_file_raw", Type: block.OptBool, Help: "The external data file must stay valid as a raw image"},
	{Name: "lazy_refcounts", Type: block.OptBool, Default: "off", Help: "Postpone refcount updates"},
	{Name: "refcount_bits", Type: block.OptNumber, Default: "16", Help: "Width of a reference count entry in bits"},
}

// nopClose lets create open its own image on the caller's container
// without closing it.
type nopClose struct{ block.File }

func (nopClose) Close() error { return nil }

// createPlan is a create request that passed every check that needs no
// container.
type createPlan struct {
	h        *header
	cs       int64
	prealloc string
	size     int64
}

func checkCreate(name string, opts block.Options) (int64, error) {
	_, err := planCreate(name, opts)
	return 0, err
}

// planCreate checks the options as qemu-img does and builds the header.
// name is the image to be made, against which a relative backing file
// name resolves; the backing file is opened to check it and to learn its
// size and format where they are not given.
func planCreate(name string, opts block.Options) (*createPlan, error) {
	h := &header{refcountOrder: 4, reftableClusters: 1}
	switch c := opts.String("compat", "1.1"); c {
	case "0.10", "v2":
		h.version = 2
		h.headerLength = v2HeaderLen
	case "1.1", "v3":
		h.version = 3
		h.headerLength = 112
	default:
		return nil, fmt.Errorf("qcow2: invalid compat level '%s' (allowed: 0.10, 1.1)", c)
	}
	cs := opts.Size("cluster_size", 65536)
	bits := uint32(0)
	for bits = minClusterBits; bits <= maxClusterBits && int64(1)<<bits != cs; bits++ {
	}
	if bits > maxClusterBits {
		return nil, fmt.Errorf("qcow2: cluster size must be a power of two between 512 and 2M (got %d)", cs)
	}
	h.clusterBits = bits
	rb := opts.Size("refcount_bits", 16)
	order := uint32(0)
	for order = 0; order <= 6 && int64(1)<<order != rb; order++ {
	}
	if order > 6 {
		return nil, fmt.Errorf("qcow2: refcount width must be a power of two and may not exceed 64 bits (got %d)", rb)
	}
	if h.version == 2 && order != 4 {
		return nil, errors.New("qcow2: different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
	}
	h.refcountOrder = order
	if opts.Bool("lazy_refcounts", false) {
		if h.version == 2 {
			return nil, errors.New("qcow2: lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
		}
		h.compatible |= compatLazyRefcounts
	}
	if opts.Bool("extended_l2", false) {
		if h.version == 2 {
			return nil, errors.New("qcow2: extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
		}
		if cs < 16384 {
			return nil, errors.New("qcow2: extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
		}
		h.incompatible |= incExtL2
	}
	switch ct := opts.String("compression_type", "zlib"); ct {
	case "zlib":
	case "zstd":
		if h.version == 2 {
			return nil, errors.New("qcow2: compression_type requires compatibility level 1.1 or above (use compat=1.1 or greater)")
		}
		h.compressionType = compressionZstd
		h.incompatible |= incCompression
	default:
		return nil, fmt.Errorf("qcow2: invalid compression type '%s' (allowed: zlib, zstd)", ct)
	}
	prealloc := opts.String("preallocation", "off")
	switch prealloc {
	case "off", "metadata", "falloc", "full":
	default:
		return nil, fmt.Errorf("qcow2: invalid preallocation mode '%s' (allowed: off, metadata, falloc, full)", prealloc)
	}
	size := opts.Size("size", -1)
	h.backingFile = opts.String("backing_file", "")
	h.backingFmt = opts.String("backing_fmt", "")
	if h.backingFile != "" {
		if prealloc != "off" {
			return nil, errors.New("qcow2: backing file and preallocation can only be used at the same time if extended_l2 is on")
		}
		if len(h.backingFile) > maxBackingName {
			return nil, errors.New("qcow2: backing file name too long")
		}
		b, err := block.OpenBacking(name, h.backingFile, h.backingFmt, &block.OpenOptions{ForceShare: true})
		if err != nil {
			return nil, fmt.Errorf("qcow2: %w", err)
		}
		if h.backingFmt == "" {
			if info, err := b.Info(); err == nil {
				h.backingFmt = info.Format
			}
		}
		if size < 0 {
			size = b.Size()
		}
		b.Close()
	} else if h.backingFmt != "" {
		return nil, errors.New("qcow2: backing format cannot be used without backing file")
	}
	if size < 0 {
		return nil, errors.New("qcow2: image size must be specified")
	}
	if size%512 != 0 {
		return nil, errors.New("qcow2: image size must be a multiple of 512 bytes")
	}
	if err := checkSize(size, cs, h.incompatible&incExtL2 != 0); err != nil {
		return nil, err
	}
	if err := checkDataFile(h, opts); err != nil {
		return nil, err
	}
	return &createPlan{h: h, cs: cs, prealloc: prealloc, size: size}, nil
}

// checkSize refuses a virtual size whose L1 table would exceed what the
// driver (and QEMU) accept.
func checkSize(size, cs int64, extL2 bool) error {
	if size > 1<<62 {
		return fmt.Errorf("qcow2: image size %d too large", size)
	}
	entrySize := int64(8)
	if extL2 {
		entrySize = 16
	}
	perL1 := cs * (cs / entrySize)
	if (size+perL1-1)/perL1*8 > maxL1Bytes {
		return fmt.Errorf("qcow2: image size %d too large for %d-byte clusters: the L1 table would exceed %d bytes (try a larger cluster size)", size, cs, maxL1Bytes)
	}
	return nil
}

func create(f block.File, opts block.Options) error {
	plan, err := planCreate(f.Name(), opts)
	if err != nil {
		return err
	}
	h, cs, size := plan.h, plan.cs, plan.size
	order := h.refcountOrder
	prealloc, err := createDataFile(h, opts, size, plan.prealloc)
	if err != nil {
		return err
	}
	// As QEMU 7.2, no feature name table with clusters of 4 KiB or less:
	// it would leave little room for a backing file name (with 512-byte
	// clusters, none for any name at all).
	if h.version >= 3 && cs > 4096 {
		h.exts = append(h.exts, extension{extFeatureTable, featureTable()})
	}
	h.reftableOffset = uint64(cs)
	hdr, err := h.encode(int(cs))
	if err != nil {
		return err
	}
	// Header, a one-cluster refcount table and one refcount block that
	// counts the three; everything else is allocated through the driver.
	meta := make([]byte, 3*cs)
	copy(meta, hdr)
	putBE64(meta[cs:], uint64(2*cs))
	tmp := &Image{rcBits: uint(order)}
	for i := int64(0); i < 3; i++ {
		tmp.rcPut(meta[2*cs:], i, 1)
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("qcow2: truncate: %w", err)
	}
	if _, err := f.WriteAt(meta, 0); err != nil {
		return fmt.Errorf("qcow2: writing metadata: %w", err)
	}
	// Unsafe: the image is not in use until create returns, and the
	// caller (block.Create) syncs the finished file once.
	img, err := open(nopClose{f}, &block.OpenOptions{NoBacking: true, Unsafe: true}, DefaultL2CacheBytes, DefaultRefcountCacheBytes)
	if err != nil {
		return err
	}
	img.mu.Lock()
	err = img.resizeLocked(size, false, false)
	var runs [][2]int64
	if err == nil && prealloc != "off" {
		runs, err = img.preallocate()
	}
	img.mu.Unlock()
	if err := errors.Join(err, img.Close()); err != nil {
		return err
	}
	if len(runs) == 0 || h.dataFile != "" {
		return nil
	}
	end := runs[len(runs)-1][1]
	fsize, err := f.Size()
	if err != nil {
		return err
	}
	if fsize < end {
		if err := f.Truncate(end); err != nil {
			return fmt.Errorf("qcow2: preallocation: %w", err)
		}
	}
	// Only the data runs: L2 tables and refcount blocks allocated between
	// them are already written and must not be zeroed.
	for _, r := range runs {
		switch prealloc {
		case "falloc":
			a, ok := f.(block.Allocator)
			if !ok {
				return errors.New("qcow2: preallocation=falloc is not supported by this container")
			}
			if err := a.Allocate(r[0], r[1]-r[0]); err != nil {
				return fmt.Errorf("qcow2: preallocation=falloc: %w", err)
			}
		case "full":
			if err := block.WriteZeroBytes(f, r[0], r[1]-r[0]); err != nil {
				return fmt.Errorf("qcow2: preallocation=full: %w", err)
			}
		}
	}
	return nil
}

// preallocate maps every cluster to a host cluster and returns the host
// ranges the data clusters occupy, in ascending order.
func (img *Image) preallocate() ([][2]int64, error) {
	n := (img.Size() + img.cs - 1) >> img.cbits
	var runs [][2]int64
	for vc := int64(0); vc < n; {
		t, idx, err := img.l2ForWrite(vc)
		if err != nil {
			return nil, err
		}
		k := min(n-vc, int64(1)<<img.l2Bits-int64(idx))
		host, err := img.allocData(vc, k)
		if err != nil {
			return nil, err
		}
		for i := int64(0); i < k; i++ {
			img.setEntry(t, idx+int(i), img.dataEntry(host+i<<img.cbits))
		}
		if l := len(runs); l > 0 && runs[l-1][1] == host {
			runs[l-1][1] += k << img.cbits
		} else {
			runs = append(runs, [2]int64{host, host + k<<img.cbits})
		}
		vc += k
		if err := img.afterMetaChange(); err != nil {
			return nil, err
		}
	}
	sort.Slice(runs, func(a, b int) bool { return runs[a][0] < runs[b][0] })
	return runs, nil
}
