// isola::shared_buffer's owning sources: a heap copy, or an adopted vector.
#include <isola/channel.hpp>
#include <isola/message.hpp>

#include <ostream>

namespace isola {

buffer_source::~buffer_source() = default;

namespace {

class vector_source final : public buffer_source {
 public:
  explicit vector_source(std::vector<std::byte> bytes) noexcept : bytes_(std::move(bytes)) {}
  std::span<const std::byte> bytes() const noexcept override { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

}  // namespace

shared_buffer shared_buffer::copy_of(std::span<const std::byte> bytes) {
  return adopt(std::vector<std::byte>(bytes.begin(), bytes.end()));
}

shared_buffer shared_buffer::adopt(std::vector<std::byte> bytes) {
  return shared_buffer(std::make_shared<vector_source>(std::move(bytes)));
}

std::ostream& operator<<(std::ostream& os, const message& m) {
  if (const value* v = m.as_value()) return os << v->repr();
  if (const shared_buffer* b = m.as_buffer()) return os << "<buffer: " << b->size() << " bytes>";
  if (const pickled* p = m.as_pickled()) {
    return os << "<pickled: " << p->data.size() << " bytes, " << p->out_of_band.size()
              << " buffers>";
  }
  const channel_ref* c = m.as_channel();
  if (!c->core) return os << "<channel: none>";
  return os << "<channel #" << channel(*c).id() << ">";
}

}  // namespace isola
