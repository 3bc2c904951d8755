// What isola's asynchronous operations (channel::async_recv/async_send, pool::async_submit)
// share in how they treat a completion handler, so they behave alike: the handler runs on its
// associated executor (asio::system_executor by default), never on an isola thread; the
// operation keeps outstanding work on that executor until the handler has been posted (so
// io_context::run() does not return early); and the handler's cancellation slot, if connected,
// is cleared before it runs.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/system_executor.hpp>

namespace isola::detail {

/// The handler's associated executor, holding outstanding work until the completion has been
/// posted to it.
template <typename Handler>
using tracked_executor_t = std::decay_t<decltype(boost::asio::prefer(
    std::declval<boost::asio::associated_executor_t<Handler, boost::asio::system_executor>>(),
    boost::asio::execution::outstanding_work.tracked))>;

template <typename Handler>
tracked_executor_t<Handler> track(const Handler& h) {
  return boost::asio::prefer(boost::asio::get_associated_executor(h, boost::asio::system_executor()),
                             boost::asio::execution::outstanding_work.tracked);
}

/// A handler waiting for its operation to complete: post() hands it the results on its
/// executor, once, from any thread.
template <typename Handler>
class completion {
 public:
  explicit completion(Handler h) : work_(track(h)), handler_(std::move(h)) {}

  template <typename... Args>
  void post(Args... args) noexcept {
    auto ex = std::move(work_);  // the posted handler counts as work from here on
    boost::asio::post(ex, [h = std::move(handler_), ... args = std::move(args)]() mutable {
      boost::asio::get_associated_cancellation_slot(h).clear();
      std::move(h)(std::move(args)...);
    });
  }

 private:
  tracked_executor_t<Handler> work_;
  Handler handler_;
};

}  // namespace isola::detail
