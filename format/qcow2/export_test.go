package qcow2

// CacheEntries reports how many tables the metadata caches hold at most.
func CacheEntries(img *Image) (l2, refcount int) { return img.l2c.cap, img.rbc.cap }
