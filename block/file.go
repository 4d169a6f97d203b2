package block

import (
	"io"
	"os"
)

// File is a container opened through a protocol: a local file or an NBD
// export. Format drivers read and write their on-disk structures through
// it, so any format can sit on any protocol. Safe for concurrent use.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Size is the container's current length in bytes.
	Size() (int64, error)
	// Truncate sets the container's length (growing with zeros).
	Truncate(size int64) error
	// Sync makes completed writes durable.
	Sync() error
	// Name is the name the container was opened by.
	Name() string
	Close() error
}

// The capabilities below are optional; a format driver checks for them with
// a type assertion and falls back when they are absent.

// HolePuncher frees the space behind a range, which then reads as zeros.
type HolePuncher interface {
	PunchHole(off, n int64) error
}

// ZeroRanger makes a range read as zeros without writing zero bytes,
// keeping the space allocated.
type ZeroRanger interface {
	ZeroRange(off, n int64) error
}

// Allocator reserves space for a range without changing its content.
type Allocator interface {
	Allocate(off, n int64) error
}

// DataMapper reports which parts of a range hold data and which are holes.
// Extents carry StatusData or StatusZero, and HostOffset equal to Offset.
// A range past the end of the container reads as zeros (ReadAt is short
// there) and is reported as StatusZero, with HostOffset -1 where the
// container could not hold data there.
type DataMapper interface {
	MapData(off, n int64) ([]Extent, error)
}

// Stater returns the fstat of the container, where it has one.
type Stater interface {
	Stat() (os.FileInfo, error)
}

// AllocatedSizer reports the bytes the container occupies on its storage
// (qemu-img's actual-size).
type AllocatedSizer interface {
	AllocatedSize() (int64, error)
}

// CreateHinter takes the hints qemu-img's file protocol gives a new image
// (its nocow and extent_size_hint options). File systems that do not know
// them fail with an error wrapping ErrNotSupported.
type CreateHinter interface {
	// SetNoCOW turns off copy-on-write (btrfs), for an empty container.
	SetNoCOW() error
	// SetExtentSizeHint asks for allocations in extents of n bytes (XFS);
	// 0 clears the hint.
	SetExtentSizeHint(n uint32) error
}
