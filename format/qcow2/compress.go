package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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

// compress returns the compressed form of one cluster, or nil if it does
// not shrink enough to be worth storing compressed.
func (img *Image) compress(p []byte) ([]byte, error) {
	var out []byte
	switch img.h.compressionType {
	case compressionZlib:
		var b bytes.Buffer
		w, err := flate.NewWriterWindow(&b, deflateWindow)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(p); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		out = b.Bytes()
	case compressionZstd:
		zencOnce.Do(func() {
			zencoder, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false),
				zstd.WithWindowSize(1<<maxClusterBits))
		})
		if zencoder == nil {
			return nil, errors.New("qcow2: zstd encoder unavailable")
		}
		out = zencoder.EncodeAll(p, nil)
	}
	// The size field holds at most cluster_size/512 sectors beyond the
	// first; and a stream as large as the cluster gains nothing.
	if int64(len(out)) >= img.cs-512 {
		return nil, nil
	}
	return out, nil
}

// WriteCompressed writes whole clusters in compressed form
// (block.CompressedWriter): off is cluster aligned and len(p) a multiple of
// the cluster size, except that the image's last cluster may be short.
// Compression runs before the metadata lock is taken, so callers compress
// on all cores.
func (img *Image) WriteCompressed(p []byte, off int64) error {
	if img.ro || img.checkOnly {
		return block.ErrReadOnly
	}
	if img.df != nil {
		return errDataFileCompressed
	}
	if err := block.CheckRange(off, int64(len(p)), img.Size()); err != nil {
		return err
	}
	if off&(img.cs-1) != 0 || (int64(len(p))&(img.cs-1) != 0 && off+int64(len(p)) != img.Size()) {
		return fmt.Errorf("qcow2: compressed writes must cover whole clusters (%d bytes)", img.cs)
	}
	for len(p) > 0 {
		n := min(int64(len(p)), img.cs)
		c := p[:n]
		if n < img.cs {
			c = make([]byte, img.cs)
			copy(c, p[:n])
		}
		if err := img.writeCompressedCluster(c, off, n); err != nil {
			return err
		}
		p = p[n:]
		off += n
	}
	return nil
}

// writeCompressedCluster stores one cluster; n is how much of it lies
// inside the image.
func (img *Image) writeCompressedCluster(p []byte, off, n int64) error {
	if block.IsZero(p) && img.backing == nil {
		// Leave it unallocated if it is: it reads as zeros already.
		img.mu.Lock()
		defer img.mu.Unlock()
		if img.closed {
			return block.ErrClosed
		}
		e, err := img.lookup(off >> img.cbits)
		if err != nil {
			return err
		}
		if e == (l2e{}) {
			return nil
		}
		return img.zeroClusters(off>>img.cbits, off>>img.cbits+1, true)
	}
	c, err := img.compress(p)
	if err != nil {
		return fmt.Errorf("qcow2: compressing: %w", err)
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		return block.ErrClosed
	}
	if c == nil {
		if err := img.writeLocked(p[:n], off); err != nil {
			return err
		}
		return img.afterMetaChange()
	}
	vc := off >> img.cbits
	t, idx, err := img.l2ForWrite(vc)
	if err != nil {
		return err
	}
	old := img.getEntry(t, idx)
	host, err := img.allocBytes(int64(len(c)))
	if err != nil {
		return err
	}
	if _, err := img.f.WriteAt(c, host); err != nil {
		return fmt.Errorf("qcow2: writing compressed data at %#x: %w", host, err)
	}
	sectors := uint64((host+int64(len(c))-1)>>9 - host>>9)
	img.setEntry(t, idx, l2e{d: flagCompressed | sectors<<img.csizeShift | uint64(host)})
	img.freeEntry(old)
	return img.afterMetaChange()
}
