// An IDL annotated for the HTTP gateway, CloudWeGo style (see examples/gateway.toml).
namespace py echo

enum Mood {
  HAPPY = 1
  GRUMPY = 2
}

struct Tag {
  1: required string name
  2: optional i32 weight = 1
}

struct EchoRequest {
  1: required i64 id (api.path = "id", api.js_conv = "true")     // /echo/:id, may exceed 2**53
  2: optional string lang (api.query = "lang")                    // ?lang=
  3: optional string trace (api.header = "X-Trace")               // a request header
  4: optional string session (api.cookie = "session")             // a cookie
  5: required string text (api.body = "text")                     // a JSON body key
  6: optional list<Tag> tags                                      // unannotated: body (POST)
  7: optional map<string, i32> counts
  8: optional Mood mood
  9: optional i32 status                                          // ask for this HTTP status back
  10: optional string secret (api.none = "true")                  // never read from HTTP
}

struct EchoResponse {
  1: i64 id (api.js_conv = "true")                                // written as a string
  2: string text
  3: optional string lang
  4: optional string trace (api.header = "X-Trace")               // a response header, not in the body
  5: optional string session
  6: optional list<Tag> tags
  7: optional map<string, i32> counts
  8: optional Mood mood
  9: optional i32 code (api.http_code = "")                       // the HTTP status
  10: optional string internal (api.none = "true")                // never in the response
  11: optional list<string> meta                                  // the TTHeader keys the server saw
}

struct LookupRequest {
  1: required i32 key (api.path = "key")
  2: optional list<i32> also (api.query = "also")                 // ?also=1&also=2
}

struct LookupResponse {
  1: list<i32> keys
  2: string name
}

exception NotFound {
  1: string what
  2: i32 key
} (api.http_code = "404")

exception Invalid {                                               // no api.http_code: 400
  1: string why
}

service EchoService {
  EchoResponse Echo(1: EchoRequest req) (api.post = "/echo/:id")
  LookupResponse Lookup(1: LookupRequest req) throws (1: NotFound nf, 2: Invalid bad) (api.get = "/lookup/:key")
  string Ping(1: double sleep) (api.get = "/ping")                // plain arguments: query parameters for GET
}
