// The service the Thrift proxy tests call through monolake.
namespace py calc

exception Boom {
  1: string why
  2: i32 code
}

struct Item {
  1: i64 id
  2: string name
  3: list<string> tags
}

service Calc {
  i32 add(1: i32 a, 2: i32 b)
  string echo(1: string s)
  Item get(1: i64 id) throws (1: Boom boom)
  // Sleeps, then answers with its tag: lets calls finish out of order.
  string slow(1: double seconds, 2: string tag)
  oneway void note(1: string text)
  // What the server saw: the notes so far, or (TTHeader server) the call's header keys.
  list<string> seen()
  // Which upstream answered.
  string who()
}

service Other {
  string hello(1: string who)
}
