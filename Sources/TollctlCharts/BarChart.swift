/// Draws a time series as vertical bars of Unicode block elements
/// (`▁▂▃▄▅▆▇█`, eight steps per text row), with a value axis on the left
/// and the first and last bucket's labels under it. Pure text in, text out:
/// the caller decides the width (the terminal's, or `COLUMNS`) and whether
/// to colour (only a terminal gets ANSI colour).
public struct BarChart: Sendable {
    public struct Point: Sendable, Hashable {
        public var label: String
        public var value: Double
        public init(label: String, value: Double) {
            self.label = label
            self.value = value
        }
    }

    /// How neighbouring buckets combine when there are more than columns.
    public enum Combine: Sendable { case sum, max }

    public var title: String
    public var points: [Point]
    /// Total width in characters, axis included.
    public var width: Int
    /// Text rows of bars.
    public var height: Int
    public var combine: Combine
    /// ANSI colour for the bars (terminals only).
    public var colour: Bool
    /// Formats axis values.
    public var format: @Sendable (Double) -> String

    public init(title: String, points: [Point], width: Int = 80, height: Int = 8, combine: Combine = .sum, colour: Bool = false,
                format: @escaping @Sendable (Double) -> String = BarChart.compact) {
        self.title = title
        self.points = points
        self.width = width
        self.height = height
        self.combine = combine
        self.colour = colour
        self.format = format
    }

    static let blocks: [Character] = [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]

    /// 1234 → "1234", 12345 → "12.3k", 2.5 → "2.5".
    public static func compact(_ value: Double) -> String {
        let magnitude = abs(value)
        if magnitude >= 1_000_000_000 { return trimmed(value / 1_000_000_000) + "G" }
        if magnitude >= 1_000_000 { return trimmed(value / 1_000_000) + "M" }
        if magnitude >= 10_000 { return trimmed(value / 1000) + "k" }
        if value == value.rounded() { return String(Int64(value)) }
        return trimmed(value)
    }

    static func trimmed(_ value: Double) -> String {
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? String(Int64(rounded)) : String(rounded)
    }

    /// The columns the bars get: buckets combined when there are more
    /// buckets than columns, each bucket repeated when there are far fewer.
    func columns(available: Int) -> [Double] {
        guard !points.isEmpty, available > 0 else { return [] }
        if points.count > available {
            let per = (points.count + available - 1) / available
            return stride(from: 0, to: points.count, by: per).map { start in
                let slice = points[start..<min(points.count, start + per)].map(\.value)
                return combine == .sum ? slice.reduce(0, +) : (slice.max() ?? 0)
            }
        }
        let repeatEach = max(1, min(4, available / points.count))
        return points.flatMap { Array(repeating: $0.value, count: repeatEach) }
    }

    public func render() -> [String] {
        let axisValues = [format(0)]
        var top = 0.0
        var axisWidth = axisValues[0].count
        // Two passes: the axis width depends on the largest label, the columns on the axis width.
        for _ in 0..<2 {
            let values = columns(available: max(1, width - axisWidth - 2))
            top = values.max() ?? 0
            axisWidth = max(format(top).count, format(0).count)
        }
        let values = columns(available: max(1, width - axisWidth - 2))
        var lines = [title]
        guard !values.isEmpty else {
            lines.append("(no data)")
            return lines
        }
        let scale = top > 0 ? Double(height * 8) / top : 0
        for row in 0..<height {
            let floor = (height - 1 - row) * 8
            var bar = ""
            for value in values {
                var eighths = Int((value * scale).rounded())
                if value > 0 && eighths == 0 { eighths = 1 }  // visible, however small
                bar.append(Self.blocks[min(8, max(0, eighths - floor))])
            }
            while bar.last == " " { bar.removeLast() }
            let label = row == 0 ? format(top) : row == height - 1 ? format(0) : ""
            let axis = row == height - 1 ? "┼" : row == 0 ? "┤" : "│"
            let padded = String(repeating: " ", count: max(0, axisWidth - label.count)) + label
            lines.append(padded + " " + axis + (colour && !bar.isEmpty ? "\u{1B}[36m" + bar + "\u{1B}[0m" : bar))
        }
        let indent = String(repeating: " ", count: axisWidth + 1)
        lines.append(indent + "└" + String(repeating: "─", count: values.count))
        let first = points.first!.label, last = points.last!.label
        if points.count > 1 && values.count >= first.count + last.count + 1 {
            lines.append(indent + " " + first + String(repeating: " ", count: values.count - first.count - last.count) + last)
        } else {
            lines.append(indent + " " + first + (points.count > 1 ? " – " + last : ""))
        }
        return lines
    }
}

/// How wide the terminal is: `COLUMNS` if set, else the terminal's width
/// as `ioctl(TIOCGWINSZ)` tells (passed in by the caller), else 80.
public func chartWidth(environment: [String: String], terminalColumns: Int?) -> Int {
    if let columns = environment["COLUMNS"].flatMap(Int.init), columns >= 20 { return min(columns, 1000) }
    if let terminalColumns, terminalColumns >= 20 { return min(terminalColumns, 1000) }
    return 80
}
