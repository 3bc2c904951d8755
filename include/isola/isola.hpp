// Umbrella header: everything a program embedding isola needs.
#pragma once

#include <isola/attach.hpp>
#include <isola/channel.hpp>
#include <isola/error.hpp>
#include <isola/info.hpp>
#include <isola/interpreter.hpp>
#include <isola/log.hpp>
#include <isola/memory.hpp>
#include <isola/message.hpp>
#include <isola/pool.hpp>
#include <isola/runtime.hpp>
#include <isola/shared.hpp>
#include <isola/value.hpp>
#include <isola/version.hpp>
