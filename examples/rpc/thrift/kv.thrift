namespace py kv

exception NotFound {
  1: string key
}

struct Entry {
  1: string key
  2: string value
  3: i64 version
}

service KV {
  Entry get(1: string key) throws (1: NotFound missing)
  Entry put(1: string key, 2: string value)
  i32 size()
  oneway void touch(1: string key)
}
