package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"vdisk/block"
)

// QEMU inflates with a 4 KiB window (windowBits -12), so deflate streams
// must not refer further back than that.
const deflateWindow = 4096

var (
	inflaters sync.Pool // io.ReadCloser implementing flate.Resetter
	zdecoders sync.Pool // *zstd.Decoder
	zencoder  *zstd.Encoder
	zencOnce  sync.Once
)

// decompress inflates compressed cluster data into out (one cluster).
func (img *Image) decompress(out []byte, src []byte) error {
	switch img.h.compressionType {
	case compressionZlib:
		br := bytes.NewReader(src)
		var r io.ReadCloser
		if v := inflaters.Get(); v != nil {
			r = v.(io.ReadCloser)
			r.(flate.Resetter).Reset(br, nil)
		} else {
			r = flate.NewReader(br)
		}
		_, err := io.ReadFull(r, out)
		inflaters.Put(r)
		if err != nil {
			return fmt.Errorf("qcow2: inflating compressed cluster: %w", err)
		}
		return nil
	case compressionZstd:
		var d *zstd.Decoder
		if v := zdecoders.Get(); v != nil {
			d = v.(*zstd.Decoder)
			if err := d.Reset(bytes.NewReader(src)); err != nil {
				return fmt.Errorf("qcow2: zstd: %w", err)
			}
		} else {
			var err error
			d, err = zstd.NewReader(bytes.NewReader(src), zstd.WithDecoderConcurrency(1),
				zstd.WithDecoderMaxMemory(4<<maxClusterBits), zstd.WithDecoderMaxWindow(1<<maxClusterBits))
			if err != nil {
				return fmt.Errorf("qcow2: zstd: %w", err)
			}
		}
		_, err := io.ReadFull(d, out)
		d.Reset(nil)
		zdecoders.Put(d)
		if err != nil {
			return fmt.Errorf("qcow2: zstd decompressing cluster: %w", err)
		}
		return nil
	}
	return errors.New("qcow2: unknown compression type")
}

// Raw deflate writers, pooled: their state is large, so one per cluster
// would cost more than compressing.
var (
	deflaters sync.Pool // *flate.Writer limited to QEMU's window
	huffmen   sync.Pool // *flate.Writer, Huffman coding only
)

// appendWriter collects a compressed stream at the end of a slice.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// deflate appends the raw deflate stream of p to dst, with a writer from
// pool (made by mk when the pool is empty).
func deflate(dst, p []byte, pool *sync.Pool, mk func(io.Writer) (*flate.Writer, error)) ([]byte, error) {
	aw := &appendWriter{b: dst}
	w, _ := pool.Get().(*flate.Writer)
	if w == nil {
		var err error
		if w, err = mk(aw); err != nil {
			return dst, err
		}
	} else {
		w.Reset(aw)
	}
	if _, err := w.Write(p); err != nil {
		return dst, err
	}
	if err := w.Close(); err != nil {
		return dst, err
	}
	w.Reset(io.Discard)
	pool.Put(w)
	return aw.b, nil
}

// compress appends the compressed form of one cluster to dst. ok is false
// when the stream is not smaller than the cluster, which QEMU then stores
// uncompressed; anything smaller is worth it, as the stream may share host
// clusters with others (see allocBytes).
func (img *Image) compress(dst, p []byte) (out []byte, ok bool, err error) {
	start := len(dst)
	switch img.h.compressionType {
	case compressionZlib:
		// klauspost's window-limited encoder: within about 1% of zlib's
		// level 6 at 64 KiB clusters and several times faster than
		// compress/flate, which cannot limit its window at all.
		out, err = deflate(dst, p, &deflaters, func(w io.Writer) (*flate.Writer, error) {
			return flate.NewWriterWindow(w, deflateWindow)
		})
		if err == nil && int64(len(out)-start) >= img.cs {
			// It stores a block in which it finds no matches, where
			// zlib still gains by Huffman coding (base64 text, say).
			out, err = deflate(dst, p, &huffmen, func(w io.Writer) (*flate.Writer, error) {
				return flate.NewWriter(w, flate.HuffmanOnly)
			})
		}
		if err != nil {
			return dst, false, err
		}
	case compressionZstd:
		zencOnce.Do(func() {
			// Literals are always entropy coded, as by libzstd: without
			// that, a block with few matches (base64 text) is stored.
			// EncodeAll runs on one of the encoder's states at a time, so
			// there is one per core for Precompress to run on them all.
			zencoder, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithEncoderCRC(false),
				zstd.WithWindowSize(1<<maxClusterBits), zstd.WithAllLitEntropyCompression(true))
		})
		if zencoder == nil {
			return dst, false, errors.New("qcow2: zstd encoder unavailable")
		}
		out = zencoder.EncodeAll(p, dst)
	default:
		return dst, false, errors.New("qcow2: unknown compression type")
	}
	// The descriptor's sector count holds any stream shorter than a
	// cluster, wherever in a sector it starts: at most cluster_size/512
	// sectors beyond the first.
	if int64(len(out)-start) >= img.cs {
		return out[:start], false, nil
	}
	return out, true, nil
}

// WriteCompressed writes whole clusters in compressed form
// (block.CompressedWriter): off is cluster aligned and len(p) a multiple of
// the cluster size, except that the image's last cluster may be short.
func (img *Image) WriteCompressed(p []byte, off int64) error {
	store, err := img.Precompress(p, off)
	if err != nil {
		return err
	}
	return store()
}

// compressed is one cluster prepared by Precompress.
type compressed struct {
	off    int64  // guest offset
	raw    []byte // the cluster's bytes inside the image, stored as is when it does not shrink
	stream []byte // the compressed stream; nil when it does not shrink
	zero   bool
}

// Precompress (block.Precompressor) compresses what WriteCompressed(p,
// off) would store, without the metadata lock, so that callers compress
// on all cores even when they store in order. p must not change until the
// returned function, which stores the clusters, has returned.
func (img *Image) Precompress(p []byte, off int64) (func() error, error) {
	if img.ro || img.checkOnly {
		return nil, block.ErrReadOnly
	}
	if img.df != nil {
		return nil, errDataFileCompressed
	}
	if err := block.CheckRange(off, int64(len(p)), img.Size()); err != nil {
		return nil, err
	}
	if off&(img.cs-1) != 0 || (int64(len(p))&(img.cs-1) != 0 && off+int64(len(p)) != img.Size()) {
		return nil, fmt.Errorf("qcow2: compressed writes must cover whole clusters (%d bytes)", img.cs)
	}
	cl := make([]compressed, 0, (int64(len(p))+img.cs-1)>>img.cbits)
	var streams []byte
	for len(p) > 0 {
		n := min(int64(len(p)), img.cs)
		c := compressed{off: off, raw: p[:n]}
		full := c.raw
		if n < img.cs {
			full = make([]byte, img.cs)
			copy(full, c.raw)
		}
		if block.IsZero(full) && img.backing == nil {
			c.zero = true
		} else {
			start := len(streams)
			var ok bool
			var err error
			if streams, ok, err = img.compress(streams, full); err != nil {
				return nil, fmt.Errorf("qcow2: compressing: %w", err)
			}
			if ok {
				c.stream = streams[start:len(streams):len(streams)]
			}
		}
		cl = append(cl, c)
		p = p[n:]
		off += n
	}
	return func() error {
		img.lockMeta()
		defer img.mu.Unlock()
		if img.closed {
			return block.ErrClosed
		}
		if img.corrupt {
			return img.errCorrupted()
		}
		for _, c := range cl {
			if err := img.storeCompressed(c); err != nil {
				return err
			}
		}
		return nil
	}, nil
}

// storeCompressed stores one cluster Precompress prepared. img.mu held
// exclusively.
func (img *Image) storeCompressed(c compressed) error {
	vc := c.off >> img.cbits
	if c.zero {
		// Leave it unallocated if it is: it reads as zeros already.
		e, err := img.lookup(vc)
		if err != nil || e == (l2e{}) {
			return err
		}
		if err := img.zeroClusters(vc, vc+1, true); err != nil {
			return err
		}
		return img.afterMetaChange()
	}
	if c.stream == nil {
		if err := img.writeLocked(c.raw, c.off, nil); err != nil {
			return err
		}
		return img.afterMetaChange()
	}
	t, idx, err := img.l2ForWrite(vc)
	if err != nil {
		return err
	}
	old := img.getEntry(t, idx)
	host, err := img.allocBytes(int64(len(c.stream)))
	if err != nil {
		return err
	}
	d, err := img.compDescriptor(host, int64(len(c.stream)))
	if err != nil {
		img.free(host, int64(len(c.stream)))
		return err
	}
	if _, err := img.f.WriteAt(c.stream, host); err != nil {
		img.free(host, int64(len(c.stream)))
		return fmt.Errorf("qcow2: writing compressed data at %#x: %w", host, err)
	}
	img.setEntry(t, idx, l2e{d: d})
	img.freeEntry(old)
	return img.afterMetaChange()
}

// initCompressedFields sets the layout of compressed cluster descriptors:
// of the 62 bits below the flags, the host offset takes the low
// 62 - (cluster_bits - 8) and the count of further 512-byte sectors the
// rest.
func (img *Image) initCompressedFields() {
	img.csizeShift = 62 - (img.cbits - 8)
	img.csizeMask = (uint64(1) << (img.cbits - 8)) - 1
	img.compOffMask = (uint64(1) << img.csizeShift) - 1
}

// compDescriptor encodes the L2 entry of a compressed stream of n bytes at
// host offset host. The offset field is narrower than an offset can be
// (49 bits with 2 MiB clusters): an offset beyond it would spill into the
// sector count and name other data, so it is refused.
func (img *Image) compDescriptor(host, n int64) (uint64, error) {
	if host <= 0 || uint64(host) > img.compOffMask {
		return 0, fmt.Errorf("qcow2: cannot store compressed data at host offset %#x: with %d-byte clusters a compressed cluster's offset must be below %#x (the image file is too large for compressed writes)",
			host, img.cs, img.compOffMask+1)
	}
	sectors := uint64((host+n-1)>>9 - host>>9)
	if n <= 0 || n > img.cs || sectors > img.csizeMask {
		return 0, fmt.Errorf("qcow2: compressed stream of %d bytes does not fit a compressed cluster descriptor", n)
	}
	return flagCompressed | sectors<<img.csizeShift | uint64(host), nil
}

var _ block.Precompressor = (*Image)(nil)
