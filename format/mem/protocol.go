package mem

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"vdisk/block"
)

// memFile is a RAM container: the protocol behind "mem:SIZE" names, so
// `vdisk io mem:64M` and `vdisk attach --mem 64M` get a RAM disk and a
// format can be created in memory for tests.
type memFile struct {
	img *Image
}

func openProtocol(name string, flags block.OpenFlags) (block.File, error) {
	sizeStr := strings.TrimPrefix(name, "mem:")
	size, err := block.ParseSize(sizeStr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	img := New(size)
	img.name = name
	return &memFile{img: img}, nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("mem: negative offset")
	}
	if err := block.CheckRange(off, int64(len(p)), f.img.Size()); err != nil {
		// A container read past its end is short, as with a file.
		if off >= f.img.Size() {
			return 0, io.EOF
		}
		n := f.img.Size() - off
		f.img.s.readAt(p[:n], off)
		return int(n), io.EOF
	}
	f.img.s.readAt(p, off)
	return len(p), nil
}

// WriteAt grows the container as a file grows.
func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("mem: negative offset")
	}
	if end := off + int64(len(p)); end > f.img.Size() {
		f.img.size.Store(end)
	}
	f.img.s.writeAt(p, off)
	return len(p), nil
}

func (f *memFile) Size() (int64, error) { return f.img.Size(), nil }

func (f *memFile) Truncate(size int64) error {
	f.img.s.truncate(size)
	f.img.size.Store(size)
	return nil
}

func (f *memFile) Sync() error  { return nil }
func (f *memFile) Name() string { return f.img.name }
func (f *memFile) Close() error { return nil }

func (f *memFile) PunchHole(off, n int64) error { f.img.s.zero(off, n); return nil }
func (f *memFile) ZeroRange(off, n int64) error { f.img.s.zero(off, n); return nil }

func (f *memFile) MapData(off, n int64) ([]block.Extent, error) {
	exts, err := f.img.BlockStatus(off, min(n, max(0, f.img.Size()-off)))
	if err != nil {
		return nil, err
	}
	for i := range exts {
		exts[i].HostOffset = exts[i].Offset
		exts[i].File = f.img.name
	}
	if end := off + n; f.img.Size() < end {
		exts = append(exts, block.Extent{Offset: max(off, f.img.Size()), Length: end - max(off, f.img.Size()), Status: block.StatusZero, HostOffset: max(off, f.img.Size())})
	}
	return exts, nil
}
