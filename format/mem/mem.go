// Package mem is a RAM-backed virtual disk, the in-memory block device of
// the Linux block-driver example done in userspace: contents live in
// memory and vanish on close.
//
// It is reachable three ways: mem.New(size) in Go; the name "mem:SIZE"
// anywhere vdisk takes an image (a protocol whose container is RAM, so any
// format can be created on it); and -f mem FILE, which loads FILE's virtual
// content into RAM for throw-away writes, like QEMU's -snapshot.
package mem

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"vdisk/block"
)

func init() {
	block.Register(Format)
	block.RegisterProtocol(&block.Protocol{
		Name:     "mem",
		Match:    func(name string) bool { return strings.HasPrefix(name, "mem:") },
		Open:     openProtocol,
		Volatile: true,
	})
}

// Format is the mem format driver. It never probes: RAM disks are asked for.
var Format = &block.Format{
	Name: "mem",
	Open: openFormat,
}

// Image is a RAM disk.
type Image struct {
	s        *store
	size     atomic.Int64
	name     string
	readOnly bool
	closed   atomic.Bool
}

// New returns an empty RAM disk of size bytes.
func New(size int64) *Image {
	m := &Image{s: newStore(), name: fmt.Sprintf("mem:%d", size)}
	m.size.Store(size)
	return m
}

// openFormat loads the virtual content of whatever f holds (probed) into
// RAM. Writes then go to memory only.
func openFormat(f block.File, opts *block.OpenOptions) (block.Image, error) {
	if mf, ok := f.(*memFile); ok {
		// A mem: container is already RAM; use it directly.
		img := mf.img
		img.readOnly = opts.ReadOnly
		return img, nil
	}
	name := f.Name()
	f.Close()
	src, err := block.Open(name, block.OpenOptions{ReadOnly: true, ForceShare: opts.ForceShare, Depth: opts.Depth})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	m := New(src.Size())
	m.name = name
	m.readOnly = opts.ReadOnly
	exts, err := block.MapChain(src, 0, src.Size())
	if err != nil {
		return nil, fmt.Errorf("mem: mapping %s: %w", name, err)
	}
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		if e.Status&block.StatusZero != 0 {
			continue
		}
		for off := e.Offset; off < e.Offset+e.Length; {
			n := min(int64(len(buf)), e.Offset+e.Length-off)
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				return nil, fmt.Errorf("mem: loading %s: %w", name, err)
			}
			m.s.writeAt(buf[:n], off)
			off += n
		}
	}
	return m, nil
}

func (m *Image) Size() int64          { return m.size.Load() }
func (m *Image) ReadOnly() bool       { return m.readOnly }
func (m *Image) Backing() block.Image { return nil }

func (m *Image) ReadAt(p []byte, off int64) (int, error) {
	if m.closed.Load() {
		return 0, block.ErrClosed
	}
	if err := block.CheckRange(off, int64(len(p)), m.Size()); err != nil {
		return 0, err
	}
	m.s.readAt(p, off)
	return len(p), nil
}

func (m *Image) WriteAt(p []byte, off int64) (int, error) {
	if err := m.writable(); err != nil {
		return 0, err
	}
	if err := block.CheckRange(off, int64(len(p)), m.Size()); err != nil {
		return 0, err
	}
	m.s.writeAt(p, off)
	return len(p), nil
}

func (m *Image) writable() error {
	if m.closed.Load() {
		return block.ErrClosed
	}
	if m.readOnly {
		return block.ErrReadOnly
	}
	return nil
}

// Flush has nothing to do: RAM is as durable as a RAM disk gets.
func (m *Image) Flush() error { return nil }

func (m *Image) Discard(off, n int64) error {
	return m.WriteZeroes(off, n, block.ZeroMayUnmap)
}

func (m *Image) WriteZeroes(off, n int64, _ block.ZeroFlags) error {
	if err := m.writable(); err != nil {
		return err
	}
	if err := block.CheckRange(off, n, m.Size()); err != nil {
		return err
	}
	m.s.zero(off, n)
	return nil
}

// BlockStatus reports chunks holding memory as data, the rest as zeros.
func (m *Image) BlockStatus(off, n int64) ([]block.Extent, error) {
	if err := block.CheckRange(off, n, m.Size()); err != nil {
		return nil, err
	}
	var out []block.Extent
	for end := off + n; off < end; {
		has, next := m.s.allocated(off, end)
		st := block.StatusZero
		if has {
			st = block.StatusData
		}
		out = append(out, block.Extent{Offset: off, Length: next - off, Status: st, HostOffset: -1})
		off = next
	}
	return out, nil
}

func (m *Image) Info() (*block.Info, error) {
	return &block.Info{
		Filename:    m.name,
		Format:      "mem",
		VirtualSize: m.Size(),
		ActualSize:  m.s.bytes(),
	}, nil
}

// Resize grows or (with shrink) shrinks the disk; dropped bytes are freed.
func (m *Image) Resize(size int64, shrink bool) error {
	if err := m.writable(); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("mem: invalid size %d", size)
	}
	if size < m.Size() && !shrink {
		return errors.New("mem: use the --shrink option to shrink the image; data beyond the new size is lost")
	}
	m.s.truncate(size)
	m.size.Store(size)
	return nil
}

// Close frees the memory.
func (m *Image) Close() error {
	if m.closed.Swap(true) {
		return nil
	}
	// The store is emptied, not replaced: requests that passed the closed
	// check may still be using it, and swapping the pointer under them
	// was a data race.
	m.s.truncate(0)
	return nil
}

var (
	_ block.Image   = (*Image)(nil)
	_ block.Resizer = (*Image)(nil)
)
