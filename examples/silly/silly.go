// Package silly is the smallest useful vdisk format driver, the "silly"
// format of Jeff Cody's QEMU block-driver primer done in Go. It shows how
// a format plugs in: register a block.Format with a name, a probe, Open
// and Create, and implement block.Image.
//
// On disk: a 512-byte header ("SILLY\x00\x00\x01", then the virtual size
// as a big-endian uint64), then the disk's bytes. Import the package for
// its side effect and `-f silly` works everywhere vdisk takes a format.
package silly

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"vdisk/block"
)

const headerSize = 512

var magic = []byte("SILLY\x00\x00\x01")

func init() {
	block.Register(&block.Format{
		Name: "silly",
		Probe: func(head, tail []byte, name string) int {
			if bytes.HasPrefix(head, magic) {
				return 100
			}
			return 0
		},
		Open:          open,
		Create:        create,
		CreateOptions: []block.OptionSpec{{Name: "size", Type: block.OptSize, Help: "Virtual disk size"}},
	})
}

func create(f block.File, opts block.Options) error {
	size := opts.Size("size", -1)
	if size < 0 || size > 1<<62 {
		return fmt.Errorf("silly: invalid size %d", size)
	}
	h := make([]byte, headerSize)
	copy(h, magic)
	binary.BigEndian.PutUint64(h[8:], uint64(size))
	if _, err := f.WriteAt(h, 0); err != nil {
		return fmt.Errorf("silly: writing header: %w", err)
	}
	return f.Truncate(headerSize + size)
}

// Image is an open silly image. Everything but the offset comes from the
// embedded container, so only what differs from a plain file is written out.
type Image struct {
	block.File
	size     int64
	readOnly bool
}

func open(f block.File, opts *block.OpenOptions) (block.Image, error) {
	h := make([]byte, 16)
	if _, err := f.ReadAt(h, 0); err != nil || !bytes.Equal(h[:8], magic) {
		f.Close()
		return nil, fmt.Errorf("silly: not a silly image")
	}
	// Don't trust the header: the size must fit in the container.
	size := int64(binary.BigEndian.Uint64(h[8:]))
	if fsize, err := f.Size(); err != nil || size < 0 || size > fsize-headerSize {
		f.Close()
		return nil, fmt.Errorf("silly: header says %d bytes, container is too small", size)
	}
	return &Image{File: f, size: size, readOnly: opts.ReadOnly}, nil
}

func (m *Image) Size() int64          { return m.size }
func (m *Image) ReadOnly() bool       { return m.readOnly }
func (m *Image) Backing() block.Image { return nil }
func (m *Image) Flush() error         { return m.File.Sync() }

func (m *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	return m.File.ReadAt(p, headerSize+off)
}

func (m *Image) WriteAt(p []byte, off int64) (int, error) {
	if m.readOnly {
		return 0, block.ErrReadOnly
	}
	if err := block.CheckRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	return m.File.WriteAt(p, headerSize+off)
}

func (m *Image) Discard(off, n int64) error { return nil }

func (m *Image) WriteZeroes(off, n int64, _ block.ZeroFlags) error {
	if err := block.CheckRange(off, n, m.size); err != nil {
		return err
	}
	return block.WriteZeroBytes(m, off, n)
}

// BlockStatus: all data, mapped at offset+512; RefineZero turns the
// container's holes into zero extents.
func (m *Image) BlockStatus(off, n int64) ([]block.Extent, error) {
	if err := block.CheckRange(off, n, m.size); err != nil {
		return nil, err
	}
	e := block.Extent{Offset: off, Length: n, Status: block.StatusData, HostOffset: headerSize + off, File: m.Name()}
	return block.RefineZero(m.File, []block.Extent{e})
}

func (m *Image) Info() (*block.Info, error) {
	return &block.Info{Filename: m.Name(), Format: "silly", VirtualSize: m.size}, nil
}
